"""The aiflowd command line: one entry point for every host-side job.

    aiflowd capture        make a labeled capture in the testbed (root)
    aiflowd extract        re-read a capture's pcap with ndpiReader and relabel
    aiflowd train          fit and evaluate models, write a report and a model
    aiflowd codegen        generate the Python and C scorers from a model
    aiflowd report         the full evaluation report of a dataset
    aiflowd demo           replay the embedded capture through the runtime
    aiflowd testbed-demo   live traffic, live conntrack, live runtime (root)
    aiflowd testbed-clean  remove testbed namespaces left by a killed run (root)
"""

import argparse
import json
import logging
import signal
import sys
from pathlib import Path

log = logging.getLogger("aiflowd")


def _positive(kind):
    def parse(text):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError("expected a value > 0, got %r" % text)
        return value
    return parse


def cmd_capture(args):
    from tools.capture import CaptureConfig, make_capture
    config = CaptureConfig(duration=args.duration, concurrency=args.concurrency,
                           seed=args.seed, time_scale=args.time_scale,
                           capture_id=args.capture_id, mix=args.mix, workers=args.workers,
                           server_processes=args.server_processes)
    summary = make_capture(args.out, config)
    print("capture %s: %d flows, %d labeled, traffic %.0f s, total %.0f s"
          % (summary["capture_id"], summary["flows"], summary["labeled"],
             summary["traffic_seconds"], summary["wall_seconds"]))
    if args.card:
        from trainer.datacard import write_card
        print("wrote %s" % write_card(args.out))
    return 0


def cmd_extract(args):
    import tempfile
    from tools.capture import extract
    with tempfile.TemporaryDirectory(prefix="aiflowd-extract-") as workdir:
        summary = extract(args.capture, args.capture_id or Path(args.capture).name, workdir)
    meta_path = Path(args.capture) / "capture.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        meta.update(summary)
        meta_path.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    print("%d flows, %d labeled, %d merged flows left out"
          % (summary["flows"], summary["labeled"], summary["merged_flows"]))
    return 0


def cmd_train(args):
    from trainer.train import train
    report = train(args.flows, args.out, seed=args.seed)
    print(Path(args.out, "report.md").read_text())
    if args.install:
        import shutil
        shutil.copyfile(Path(args.out) / "deploy.joblib", args.install)
        print("installed the deployment model as %s" % args.install)
    return 0 if report else 1


def cmd_codegen(args):
    from codegen.export import generate
    paths = generate(args.model, args.out)
    for path in paths.values():
        print("wrote %s" % path)
    return 0


def cmd_report(args):
    from tools.demo import DEFAULT_CORPUS
    from trainer.report import build_report
    corpus = None if args.no_corpus else args.corpus
    if corpus is None and not args.no_corpus:
        if DEFAULT_CORPUS.is_dir():
            corpus = DEFAULT_CORPUS
        else:
            log.warning("no real-world captures at %s; the report leaves that section out "
                        "(pass --corpus DIR to add it)", DEFAULT_CORPUS)
    build_report(args.data, args.out, seed=args.seed, corpus_dir=corpus,
                 ablation=not args.no_ablation)
    print("wrote %s" % (args.out / "REPORT.md"))
    return 0


def cmd_demo(args):
    from tools.demo import replay_demo
    replay_demo(args.data, args.out, seed=args.seed)
    return 0


def cmd_testbed_demo(args):
    from tools.demo import testbed_demo
    testbed_demo(args.model, duration=args.duration, concurrency=args.concurrency,
                 seed=args.seed, time_scale=args.time_scale)
    return 0


def cmd_testbed_clean(args):
    from tools.testbed import remove_leftovers
    names = remove_leftovers()
    print("removed %d namespaces%s" % (len(names), (": " + ", ".join(names)) if names else ""))
    return 0


def build_parser():
    from tools.demo import DEFAULT_DATA, REPO

    parser = argparse.ArgumentParser(prog="aiflowd", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("capture", help="make a labeled capture in the testbed (root)")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--duration", type=_positive(float), default=240.0,
                   help="seconds during which new sessions start (default 240)")
    p.add_argument("--concurrency", type=_positive(int), default=32,
                   help="sessions at once (default 32)")
    p.add_argument("--seed", type=int, default=1, help="scenario parameter seed (default 1)")
    p.add_argument("--time-scale", type=_positive(float), default=1.0,
                   help="divide think times and pacing by this (default 1: real time)")
    p.add_argument("--capture-id", default="", help="id stored in the flows (default: "
                   "the output directory's name)")
    p.add_argument("--mix", default="", help="sessions to run, as scenario/family[:weight] "
                   "entries separated by commas (default: the traffic client's balanced mix)")
    p.add_argument("--workers", type=_positive(int), default=1,
                   help="traffic client worker processes (default 1)")
    p.add_argument("--server-processes", type=_positive(int), default=1,
                   help="traffic server processes (default 1)")
    p.add_argument("--card", action="store_true", help="also write the data card")
    p.set_defaults(func=cmd_capture)

    p = sub.add_parser("extract", help="re-read a capture's pcap and join its labels")
    p.add_argument("--capture", required=True, type=Path, help="capture directory")
    p.add_argument("--capture-id", default="")
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("train", help="fit and evaluate models")
    p.add_argument("--flows", nargs="+", type=Path, default=[DEFAULT_DATA / "flows.csv"],
                   help="labeled flow CSVs (default: the embedded capture)")
    p.add_argument("--out", type=Path, default=REPO / "build" / "train",
                   help="output directory (default build/train)")
    p.add_argument("--seed", type=int, default=1, help="split and model seed (default 1)")
    p.add_argument("--install", type=Path, default=None,
                   help="also copy the deployment model here (e.g. the committed "
                   "data/model/aiflowd-default.joblib)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("codegen", help="generate the Python and C scorers from a model")
    p.add_argument("--model", type=Path, required=True, help="model bundle (joblib)")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.set_defaults(func=cmd_codegen)

    p = sub.add_parser("report", help="the full evaluation report of a dataset")
    p.add_argument("--data", nargs="+", type=Path, default=[DEFAULT_DATA / "flows.csv"],
                   help="labeled flow CSVs, each with its conntrack trace beside it "
                   "(default: the embedded capture)")
    p.add_argument("--out", type=Path, default=REPO / "build" / "report",
                   help="output folder (default build/report)")
    p.add_argument("--corpus", type=Path, default=None,
                   help="folder of real-world pcaps for the false positive section "
                   "(default: nDPI's test captures in ../shared/data/ndpi-corpus when present)")
    p.add_argument("--no-corpus", action="store_true", help="leave the real-world section out")
    p.add_argument("--no-ablation", action="store_true", help="leave the feature ablation out")
    p.add_argument("--seed", type=int, default=1)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("demo", help="replay the embedded capture through the runtime")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="capture directory")
    p.add_argument("--out", type=Path, default=REPO / "build" / "demo",
                   help="folder for the trained model and generated code (default build/demo)")
    p.add_argument("--seed", type=int, default=1, help="split and model seed (default 1)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("testbed-demo", help="live traffic and live conntrack (root)")
    p.add_argument("--model", type=Path, default=None,
                   help="generated scorer (default firmware/generated/aiflowd_model.py)")
    p.add_argument("--duration", type=_positive(float), default=60.0,
                   help="seconds during which new sessions start (default 60); running "
                   "sessions then finish, which takes a few minutes more")
    p.add_argument("--concurrency", type=_positive(int), default=16,
                   help="sessions at once (default 16)")
    p.add_argument("--seed", type=int, default=7,
                   help="scenario parameter seed (default 7, not the embedded capture's 1)")
    p.add_argument("--time-scale", type=_positive(float), default=1.0,
                   help="divide think times and pacing by this (default 1: real time)")
    p.set_defaults(func=cmd_testbed_demo)

    p = sub.add_parser("testbed-clean", help="remove leftover testbed namespaces (root)")
    p.set_defaults(func=cmd_testbed_clean)
    return parser


def _terminate(signum, frame):
    # Turn SIGTERM into the same unwinding as Ctrl-C, so the testbed's
    # context manager removes its namespaces.
    raise KeyboardInterrupt()


def main(argv=None):
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, _terminate)
    from tools.testbed import TestbedError
    try:
        return args.func(args)
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
    except (TestbedError, FileNotFoundError, ValueError, RuntimeError) as exc:
        log.error("%s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
