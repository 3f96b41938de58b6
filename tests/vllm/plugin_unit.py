"""Run inside vLLM's venv by tests/vllm/test_plugin.py: degen's logits processor built
by vLLM's own loader, fed vLLM's own ``BatchUpdate`` objects (rows added, removed,
swapped and moved as the persistent batch does) and real token ids of the bundled
tokenizer; prints what it saw as JSON for the test to judge.

    .venv-vllm/bin/python tests/vllm/plugin_unit.py MODEL_FOLDER EVENTS_FILE
"""

from __future__ import annotations

import json
import os
import sys
from types import SimpleNamespace
from typing import Any

import torch
from transformers import AutoTokenizer
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import (
    BatchUpdate,
    LogitsProcessor,
    MoveDirectionality,
    _load_logitsprocs_by_fqcns,
)

FQCN = "degen.integrations.vllm:DegenLogitsProcessor"
LOOP = "The waves crash on the shore, the gulls cry out above. " * 40
CLEAN = ("The sea is wide and deep. Its colour changes with the weather: grey under "
         "clouds, green near the rocks, a hard blue at noon in summer. Fishermen read "
         "the swell before dawn, and children count the boats coming home at dusk. "
         "Storms arrive from the west in autumn; in spring the water is calm and cold.")


def params(eos: int, **extra: Any) -> SamplingParams:
    p = SamplingParams(max_tokens=400, extra_args=extra or None)
    p.update_from_generation_config({}, eos_token_id=eos)
    return p


def forced(logits: torch.Tensor, eos: int) -> list[int]:
    """The rows whose only finite logit is the end token's."""
    return [i for i in range(logits.shape[0])
            if torch.isfinite(logits[i]).sum().item() == 1
            and torch.isfinite(logits[i, eos]).item()]


def main() -> None:
    folder, events = sys.argv[1], sys.argv[2]
    os.environ["DEGEN_VLLM_EVENTS"] = events
    os.environ.pop("DEGEN_VLLM_CUT", None)
    os.environ.pop("DEGEN_VLLM_LOG_CONTENT", None)
    tok = AutoTokenizer.from_pretrained(folder)
    eos = tok.eos_token_id
    vocab = len(tok)
    config = SimpleNamespace(model_config=SimpleNamespace(
        tokenizer=folder, tokenizer_revision=None, trust_remote_code=False,
        max_model_len=2048, served_model_name=["SmolLM2-135M-Instruct"], model=folder))
    out: dict[str, Any] = {}

    (cls,) = _load_logitsprocs_by_fqcns([FQCN])  # as --logits-processors loads it
    out["subclass"] = issubclass(cls, LogitsProcessor)
    proc = cls(config, torch.device("cpu"), False)
    out["argmax_invariant"] = proc.is_argmax_invariant()
    prompt = tok.encode("Write a short poem about the sea.")
    loop_ids = tok.encode(LOOP)
    clean_ids = tok.encode(CLEAN)
    # rows 0 and 2 ask for degen, row 1 does not (no DEGEN_VLLM_CUT: not watched)
    outs: list[list[int]] = [[], [], []]
    proc.update_state(BatchUpdate(batch_size=3, removed=[], moved=[], added=[
        (0, params(eos, degen=True, degen_id="looper"), prompt, outs[0]),
        (1, params(eos), prompt, outs[1]),
        (2, params(eos, degen="loop"), prompt, outs[2])]))
    out["watched_rows"] = sorted(proc.rows)
    # generate: one token per row per step, as the engine appends them
    cut_step = None
    for step in range(len(loop_ids)):
        outs[0].append(loop_ids[step])
        outs[1].append(loop_ids[step])
        outs[2].append(clean_ids[step % len(clean_ids)])
        proc.update_state(None)
        logits = torch.zeros(3, vocab)
        rows = forced(proc.apply(logits), eos)
        if rows:
            cut_step = step + 1
            out["forced_at_cut"] = rows
            out["untouched_rows_zero"] = bool((logits[1:] == 0).all())
            break
    out["cut_step"] = cut_step
    out["loop_tokens"] = len(loop_ids)
    out["clean_cut"] = proc.rows[2].watch.cut is not None

    # a placeholder token (-1, async scheduling) is not fed
    fed = proc.rows[2].fed
    outs[2].append(-1)
    proc.update_state(None)
    out["placeholder_not_fed"] = proc.rows[2].fed == fed
    outs[2][-1] = clean_ids[0]

    # swap rows 0 and 2 (SWAP): the cut follows its request
    proc.update_state(BatchUpdate(batch_size=3, removed=[], added=[],
                                  moved=[(0, 2, MoveDirectionality.SWAP)]))
    out["after_swap"] = forced(proc.apply(torch.zeros(3, vocab)), eos)
    # the clean request (now row 0) ends; condensing moves the cut one from row 2 to
    # row 0 (UNIDIRECTIONAL), as the persistent batch does
    proc.update_state(BatchUpdate(batch_size=2, removed=[0], added=[],
                                  moved=[(2, 0, MoveDirectionality.UNIDIRECTIONAL)]))
    out["after_move_rows"] = sorted(proc.rows)
    out["after_move"] = forced(proc.apply(torch.zeros(2, vocab)), eos)
    # the cut request ends; a new one takes its row: a fresh watch, nothing forced
    new_out: list[int] = []
    proc.update_state(BatchUpdate(batch_size=2, removed=[0], moved=[], added=[
        (0, params(eos, degen="all"), prompt, new_out)]))
    new_out.extend(clean_ids[:20])
    proc.update_state(None)
    out["after_replace"] = forced(proc.apply(torch.zeros(2, vocab)), eos)
    out["replaced_fed"] = proc.rows[0].fed
    # it opts out again (degen false): a re-added request at the same row is dropped
    proc.update_state(BatchUpdate(batch_size=2, removed=[], moved=[], added=[
        (0, params(eos, degen=False), prompt, [])]))
    out["after_opt_out_rows"] = sorted(proc.rows)
    out["counts"] = dict(proc.counts)

    # the per-request switch is checked when the request arrives (HTTP 400)
    errors = {}
    for bad in ("lop", 2, ["loop", 3]):
        try:
            cls.validate_params(params(eos, degen=bad))
            errors[repr(bad)] = None
        except ValueError as e:
            errors[repr(bad)] = str(e)
    out["errors"] = errors

    # DEGEN_VLLM_CUT=loop: every request watched unless it opts out
    os.environ["DEGEN_VLLM_CUT"] = "loop"
    everyone = cls(config, torch.device("cpu"), False)
    everyone.update_state(BatchUpdate(batch_size=2, removed=[], moved=[], added=[
        (0, params(eos), prompt, []), (1, params(eos, degen=False), prompt, [])]))
    out["env_rows"] = sorted(everyone.rows)
    out["env_kinds"] = sorted(everyone.rows[0].watch.cut_kinds)
    os.environ["DEGEN_VLLM_CUT"] = "loops"
    try:
        cls(config, torch.device("cpu"), False)
        out["env_error"] = None
    except ValueError as e:
        out["env_error"] = str(e)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
