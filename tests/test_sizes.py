"""Input sizes as users and callers spell them."""

import numpy as np
import pytest

from yolox_deploy.errors import InputError
from yolox_deploy.utils.sizes import parse_img_size


@pytest.mark.parametrize("size,expected", [(320, (320, 320)), (np.int64(416), (416, 416)), ("640x480", (640, 480)),
                                           ("640, 480", (640, 480)), ([320, 416], (320, 416)), ((np.int32(64),), (64, 64)),
                                           ("320", (320, 320)), (np.array([320, 416]), (320, 416)),
                                           (np.array([64]), (64, 64))])
def test_sizes_people_write(size, expected):
    assert parse_img_size(size) == expected


@pytest.mark.parametrize("size,message", [(320.0, "one or two integers"), (True, "one or two integers"),
                                          (None, "one or two integers"), ([32.0], "one or two integers"),
                                          ("abc", "one or two integers"), ([32, 64, 96], "(height width)"),
                                          (400, "not a positive multiple of 32"), (-32, "not a positive multiple"),
                                          (4128, "beyond 4096"), (np.array([[320, 416]]), "one or two integers")])
def test_sizes_that_are_refused(size, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_img_size(size)


def test_an_export_format_is_a_name():
    from yolox_deploy.export import format_class

    assert format_class(" TRT ").info.name == "tensorrt"
    with pytest.raises(InputError, match="named by a string"):
        format_class(None)
