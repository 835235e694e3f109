"""A sink process for the chaos run: ``python -m tests.chaos.sink_proc BOOTSTRAP PREFIX DB
GROUP OUT [crash]``.

With ``crash`` it exits (``os._exit(17)``) right after the database commit of the first
batch that stored a final and before that batch's offsets are committed, after writing the
lines of that batch to OUT; without it, it runs until SIGTERM and writes its counters to OUT.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

from streamscribe.consumers.sink import DecodedBatch, run_sink
from streamscribe.core.settings import Settings
from streamscribe.schemas.transcripts import FinalTranscript

EXIT_CRASHED = 17


def main() -> None:
    bootstrap, prefix, db_url, group, out = sys.argv[1:6]
    crash = sys.argv[6:] == ["crash"]
    settings = Settings.from_env().with_overrides(bootstrap_servers=bootstrap, topic_prefix=prefix)

    def die_after_db_commit(batch: DecodedBatch) -> None:
        finals = [e for e in batch.events if isinstance(e, FinalTranscript)]
        if finals:
            lines = sorted({(f.session_id, f.channel, f.utterance) for f in finals})
            with open(out, "w") as f:
                json.dump({"messages": batch.messages, "lines": lines}, f)
            os._exit(EXIT_CRASHED)  # rows committed, offsets not

    stats = run_sink(
        settings,
        db_url=db_url,
        group_id=group,
        from_earliest=True,
        batch_size=20,
        after_db_commit=die_after_db_commit if crash else None,
    )
    with open(out, "w") as f:
        json.dump(dataclasses.asdict(stats), f)


if __name__ == "__main__":
    main()
