"""``python -m siddm_lab.train`` (same as ``siddm-train``)."""

from siddm_lab.cli.train import main

if __name__ == "__main__":
    main()
