"""Regenerate docs/demo.png, the README's picture of ``meshlet demo``: run the demo with a recording console,
export it as SVG (rich) and turn that into PNG with ``rsvg-convert`` (Debian: ``apt-get install librsvg2-bin``).

A one-off for humans (``make screenshot``); CI never runs it. The demo's ports and trace ids differ on every run.
"""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console

from meshlet.demo import DemoOptions, run_demo

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of traffic (default 30)")
    parser.add_argument("--rate", type=float, default=40.0, help="checkouts per second (default 40)")
    parser.add_argument("--width", type=int, default=130, help="terminal columns (default 130)")
    parser.add_argument("--out", type=Path, default=HERE / "demo.png")
    args = parser.parse_args()
    rsvg = shutil.which("rsvg-convert")
    if rsvg is None:
        print("needs rsvg-convert: apt-get install librsvg2-bin", file=sys.stderr)
        return 2
    # Not a terminal: no spinners or live bars in the recording, only what stays on screen at the end.
    console = Console(record=True, width=args.width, file=io.StringIO(), color_system="truecolor")
    print(f"running meshlet demo for {args.duration:g}s of traffic ...", file=sys.stderr)
    code = run_demo(DemoOptions(duration_s=args.duration, rate=args.rate), console)
    with tempfile.TemporaryDirectory() as folder:
        svg = Path(folder) / "demo.svg"
        # rich writes spaces as &#160; but librsvg drops them at the start of a text run unless told to keep them.
        svg.write_text(console.export_svg(title="meshlet demo").replace("<svg ", '<svg xml:space="preserve" ', 1))
        subprocess.run([rsvg, "--format", "png", "--output", str(args.out), str(svg)], check=True)
    print(f"wrote {args.out} (the demo exited {code})", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
