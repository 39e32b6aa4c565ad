"""The per-message recipe as a whole process: what a user runs instead of `streamproc pack`.

One `apply_chat_template` per message (transformers' tokenizer), labels from the message's role,
cut to --seq-len, written as one Arrow file; no packing. The recipe's code is the one in
streamproc/benchmarks/guide.py. Run by `streamproc bench --section pack-job`; by hand:

    python benches/pack_job_recipe.py INPUT.jsonl TOKENIZER_DIR SEQ_LEN OUT.arrow
"""

from __future__ import annotations

import json
import sys


def main(src: str, tokenizer: str, seq_len: int, out: str) -> None:
    import pyarrow as pa
    from transformers import AutoTokenizer

    from streamproc.benchmarks.guide import build_masked_example

    tok = AutoTokenizer.from_pretrained(tokenizer)
    ids, labels = [], []
    with open(src, encoding="utf-8") as f:
        for line in f:
            ex = build_masked_example(json.loads(line)["conversations"], tok, max_length=seq_len)
            ids.append(ex["input_ids"])
            labels.append(ex["labels"])
    table = pa.table({"input_ids": pa.array(ids, pa.list_(pa.int32())), "labels": pa.array(labels, pa.list_(pa.int32()))})
    with pa.OSFile(out, "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
        w.write_table(table)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])
