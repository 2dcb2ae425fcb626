"""``python -m siddm_lab.sample`` (same as ``siddm-sample``)."""

from siddm_lab.cli.sample import main

if __name__ == "__main__":
    main()
