"""Small drops shared by the service and end-to-end suites."""

import json
from pathlib import Path


def make_drops(folder: Path) -> list[Path]:
    """Three small drops, one per format, so a run crosses file boundaries."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = {
        "a.jsonl": [{"text": f"If X={i} and Y={i + 2}, X+Y = {2 * i + 2}."} for i in range(60)],
        "b.jsonl": [
            {"prompt": f"What is {i} times 3?", "completion": f" {i * 3}."} for i in range(40)
        ],
        "c.jsonl": [
            {
                "messages": [
                    {"role": "user", "content": f"{i} minus 1?"},
                    {"role": "assistant", "content": f"{i - 1}"},
                ]
            }
            for i in range(40)
        ],
    }
    paths = []
    for name, items in rows.items():
        path = folder / name
        path.write_text("".join(json.dumps(r) + "\n" for r in items))
        paths.append(path)
    return paths
