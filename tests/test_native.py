"""Silencing a native library's console output for a block."""

import os

from yolox_deploy.utils.native import silenced_stderr


def test_the_descriptor_is_silenced_inside_the_block_and_restored_after(capfd):
    os.write(2, b"before\n")
    with silenced_stderr():
        os.write(2, b"from a C library\n")
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "before\nafter\n"


def test_restored_when_the_block_raises(capfd):
    try:
        with silenced_stderr():
            raise ValueError("boom")
    except ValueError:
        pass
    os.write(2, b"still there\n")
    assert capfd.readouterr().err == "still there\n"
