"""FreeNet end to end on built-in synthetic data: data -> base network -> FreeNet -> report.

    python demo.py            # ~9 minutes on 2 CPU cores; report in demo_output/report/
    python demo.py --quick    # ~30 s smoke run
    python demo.py --device cuda
"""
import sys

from freenet.demo import main

if __name__ == "__main__":
    sys.exit(main())
