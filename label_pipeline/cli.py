"""`label-pipeline` console command: runs the flow (see ``--help``)."""

from __future__ import annotations


def main(argv: list[str] | None = None) -> None:
    from flows.label_pipeline import main as flow_main

    flow_main(argv)


if __name__ == "__main__":
    main()
