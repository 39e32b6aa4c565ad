"""TRL's own preparation of conversational data as a whole process, from its public functions:
what `SFTTrainer(assistant_only_loss=True, packing=True)` does to a dataset before training.

`get_training_chat_template` (TRL's training variant of the model's template, with
`{% generation %}` markers), `apply_chat_template(..., return_assistant_tokens_mask=True)` per
conversation, labels from the assistant mask, `pack_dataset(strategy="bfd")` (which truncates
what exceeds --seq-len), saved with `save_to_disk`. Run by `streamproc bench --section pack-job`;
by hand:

    python benches/pack_job_trl.py INPUT.jsonl TOKENIZER_DIR SEQ_LEN OUT_DIR
"""

from __future__ import annotations

import json
import sys

ROLES = {"system": "system", "human": "user", "gpt": "assistant", "tool": "tool"}


def main(src: str, tokenizer: str, seq_len: int, out: str) -> None:
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl.chat_template_utils import get_training_chat_template
    from trl.data_utils import pack_dataset

    tok = AutoTokenizer.from_pretrained(tokenizer)
    template = get_training_chat_template(tok) or tok.chat_template
    with open(src, encoding="utf-8") as f:
        rows = [{"messages": [{"role": ROLES[t["from"]], "content": t["value"]} for t in json.loads(line)["conversations"]]} for line in f]

    def tokenize(example):
        out = tok.apply_chat_template(example["messages"], chat_template=template, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        labels = [i if m else -100 for i, m in zip(out["input_ids"], out["assistant_masks"])]
        return {"input_ids": out["input_ids"], "labels": labels}

    ds = Dataset.from_list(rows).map(tokenize, remove_columns=["messages"])
    pack_dataset(ds, seq_len, strategy="bfd").save_to_disk(out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])
