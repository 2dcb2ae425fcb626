"""``python -m siddm_lab.distill`` (same as ``siddm-distill``)."""

from siddm_lab.cli.distill import main

if __name__ == "__main__":
    main()
