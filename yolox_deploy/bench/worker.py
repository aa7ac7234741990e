"""A fresh process for one benchmark row, or for the demo head-to-head (``BenchConfig.isolate``).

    python -m yolox_deploy.bench.worker row|demo SPEC.json RESULT.json

SPEC holds the run's configuration and the row (or the measured rows, for ``demo``); RESULT receives the
:class:`~yolox_deploy.bench.results.BenchRow` (or ``{"demos": [...], "skipped": ...}``) as JSON, written
atomically. Progress bars and log messages go to stderr, as in the parent.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from ..utils.files import write_text_atomic
from .results import BenchRow
from .runner import BenchConfig, RowRunner, RowSpec, load_timing_images, model_source, run_demo_comparison


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] not in ("row", "demo"):
        print("usage: python -m yolox_deploy.bench.worker row|demo SPEC.json RESULT.json", file=sys.stderr)
        return 2
    command, spec_path, out_path = argv
    spec = json.loads(Path(spec_path).read_text())
    logging.basicConfig(level=int(spec.get("log_level", logging.INFO)), format="%(message)s", stream=sys.stderr)
    cfg = BenchConfig.from_dict(spec["config"])
    images, _ = load_timing_images(cfg.images, cfg.max_images, cfg.seed)
    if command == "row":
        row_spec = RowSpec.from_dict(spec["row"])
        ap_cache = {k: tuple(v) for k, v in spec.get("ap_cache", {}).items()}
        runner = RowRunner(cfg, images, ap_cache)
        row = row_spec.run(runner, model_source(row_spec.model, cfg.weights_dir, cfg.seed))
        result = row.to_dict()
    else:
        rows = [BenchRow.from_dict(r) for r in spec["rows"]]
        sources = {m: model_source(m, cfg.weights_dir, cfg.seed) for m in {r.model for r in rows}}
        try:
            demos, skipped = run_demo_comparison(RowRunner(cfg, images), rows, sources)
            result = {"demos": [d.to_dict() for d in demos], "skipped": skipped}
        except Exception as e:  # reported by the parent as a note; the rows stand
            logging.getLogger(__name__).debug("demo comparison failed", exc_info=True)
            result = {"error": f"{type(e).__name__}: {e}"}
    write_text_atomic(out_path, json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group: the parent says "interrupted"
        sys.exit(130)
