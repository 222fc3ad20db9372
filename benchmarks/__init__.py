"""Benchmarks: latency, throughput and accuracy, recorded in benchmarks/results/."""


def markdown_header(title: str, command: str) -> list[str]:
    """The first lines of every results page: its title and the exact command that wrote it."""
    return [f"# {title}", "", f"Command: `{command}`  "]
