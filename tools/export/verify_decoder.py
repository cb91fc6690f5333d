#!/usr/bin/env python3
"""Run an ``image-text-decoder`` package with ONNX Runtime and compare with its PyTorch references.

Usage::

    python tools/export/verify_decoder.py sample_data/models/blip2-tiny

No torch, no transformers: ``model.toml``, the three ONNX graphs, ``tokenizer.json``
(HF ``tokenizers``) and numpy only -- the same inputs the Rust runner has.  For every case
of ``reference/reference.json`` it

* builds input_ids with the manifest's prompt rule (template, image-token expansion,
  ``add_special_tokens = add_bos``, left padding) and checks them against the ids HF used
  (equal once padding is removed);
* checks preprocessing of ``images_u8.bin`` against ``pixels_f32.bin``;
* runs image_prefix -> embed_tokens -> row replacement -> decoder prefill (past length 0)
  -> one-token cached steps, with greedy search or with a port of transformers 5.24
  ``GenerationMixin._beam_search`` (README "Beam search"), and compares the new tokens
  token-for-token with PyTorch ``generate``;
* compares the first-step logits with the recorded ones.

Exit status 1 on any mismatch.
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

NEG = np.float32(-1.0e9)


class Package:
    def __init__(self, root: Path):
        self.root = root
        self.m = tomllib.loads((root / "model.toml").read_text())
        o = ort.SessionOptions()
        o.log_severity_level = 3
        sess = lambda n: ort.InferenceSession(str(root / n), o, providers=["CPUExecutionProvider"])  # noqa: E731
        self.prefix = sess(self.m["image"]["onnx"])
        self.embed = sess(self.m["embed"]["onnx"])
        self.dec = sess(self.m["decoder"]["onnx"])
        self.tok = Tokenizer.from_file(str(root / self.m["tokenizer"]["file"]))
        d = self.m["decoder"]
        self.L, self.kv, self.hd = d["layers"], d["kv_heads"], d["head_dim"]
        self.past_names = [d[k].format(i=i) for i in range(self.L) for k in ("past_key", "past_value")]
        self.present_names = [d[k].format(i=i) for i in range(self.L) for k in ("present_key", "present_value")]
        t = self.m["tokenizer"]
        self.eos, self.pad = t["eos_token_id"], t["pad_token_id"]

    # -- prompt ---------------------------------------------------------------------------------
    def prompt_ids(self, prompt: str) -> list[int]:
        p = self.m["prompt"]
        text = p["template"].replace("{image}", p["image_token"] * self.m["image"]["tokens"]).replace(
            "{prompt}", prompt)
        return self.tok.encode(text, add_special_tokens=p["add_bos"]).ids

    def left_pad(self, seqs):
        n = max(len(s) for s in seqs)
        ids = np.full((len(seqs), n), self.pad, np.int64)
        mask = np.zeros((len(seqs), n), np.int64)
        for r, s in enumerate(seqs):
            ids[r, n - len(s):], mask[r, n - len(s):] = s, 1
        return ids, mask

    # -- model ----------------------------------------------------------------------------------
    def prompt_embeds(self, ids: np.ndarray, pixels: np.ndarray) -> np.ndarray:
        pre = self.prefix.run([self.m["image"]["output"]], {self.m["image"]["input"]: pixels})[0]
        emb = self.embed.run([self.m["embed"]["output"]], {self.m["embed"]["input"]: ids})[0].copy()
        tid = self.m["prompt"]["image_token_id"]
        for b in range(ids.shape[0]):
            rows = np.nonzero(ids[b] == tid)[0]
            assert len(rows) == pre.shape[1]
            emb[b, rows] = pre[b]
        return emb

    def step(self, embeds, mask, past):
        d = self.m["decoder"]
        if d.get("kv_cache") == "in-place":
            return self.step_in_place(embeds, mask, past)
        pos = np.cumsum(mask, axis=1) - 1
        pos = np.where(mask == 0, 0, pos)[:, -embeds.shape[1]:].astype(np.int64)
        feed = {d["inputs_embeds"]: embeds, d["attention_mask"]: mask, d["position_ids"]: pos}
        feed.update(zip(self.past_names, past))
        out = self.dec.run([d["logits"]] + self.present_names, feed)
        return out[0][:, -1, :].astype(np.float32), out[1:]

    def step_in_place(self, embeds, mask, past):
        """``kv_cache = "in-place"``: the same left-padded call, its rows moved to the right-padded
        layout the graph takes (row b's real tokens first, ``seqlens_k`` = its length - 1); the
        past is a buffer of ``max_positions`` (the graph returns it with this call's keys in)."""
        d = self.m["decoder"]
        B, T, H = embeds.shape
        new = mask[:, -T:]
        n = new.sum(1)
        x = np.zeros((B, int(n.max()), H), np.float32)
        for b in range(B):
            x[b, : n[b]] = embeds[b, new[b] == 1]
        start = mask.sum(1) - n
        pos = (start[:, None] + np.arange(x.shape[1])[None, :]).astype(np.int64)
        seq = (mask.sum(1) - 1).astype(np.int32)
        feed = {d["inputs_embeds"]: x, d["sequence_lengths"]: seq, d["position_ids"]: pos}
        feed.update(zip(self.past_names, past))
        out = self.dec.run([d["logits"]] + self.present_names, feed)
        return out[0][:, -1, :].astype(np.float32), out[1:]

    def empty_past(self, b):
        if self.m["decoder"].get("kv_cache") == "in-place":
            n = self.m["decoder"]["max_positions"]
            return [np.zeros((b, self.kv, n, self.hd), np.float32) for _ in self.past_names]
        return [np.zeros((b, self.kv, 0, self.hd), np.float32) for _ in self.past_names]

    def embed_one(self, tokens: np.ndarray) -> np.ndarray:
        return self.embed.run(None, {self.m["embed"]["input"]: tokens.reshape(-1, 1).astype(np.int64)})[0]


# -- logits processors (transformers 5.24 order: repetition penalty, n-gram blocking, min_new_tokens) ---


def process(scores, seqs, ignore, gen, prompt_len, eos):
    scores = scores.copy()
    p = gen["repetition_penalty"]
    if p != 1.0:
        for r in range(scores.shape[0]):
            ids = np.unique(np.asarray(seqs[r][ignore[r]:], np.int64))
            s = scores[r, ids]
            scores[r, ids] = np.where(s < 0, s * np.float32(p), s / np.float32(p))
    n = gen.get("no_repeat_ngram_size") or 0
    if n > 0 and len(seqs[0]) >= n:
        # NoRepeatNGramLogitsProcessor over the padded rows: windows whose first n-1 ids equal the
        # last n-1 ids ban their last id
        for r in range(scores.shape[0]):
            seq = seqs[r]
            prefix = seq[len(seq) + 1 - n:]
            for i in range(len(seq) - n + 1):
                if seq[i:i + n - 1] == prefix and seq[i + n - 1] < scores.shape[1]:
                    scores[r, seq[i + n - 1]] = -np.inf
    if len(seqs[0]) - prompt_len < gen["min_new_tokens"]:
        scores[:, eos] = -np.inf
    return scores


def log_softmax(x):
    m = x.max(axis=-1, keepdims=True)
    return (x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))).astype(np.float32)


def greedy(pkg: Package, emb, ids, mask, gen):
    B, P = ids.shape
    ignore = (mask != 0).argmax(axis=1)
    seqs = [list(map(int, r)) for r in ids]
    logits, past = pkg.step(emb, mask, pkg.empty_past(B))
    first = logits.copy()
    done = np.zeros(B, bool)
    out = [[] for _ in range(B)]
    for _ in range(gen["max_new_tokens"]):
        sc = process(logits, seqs, ignore, gen, P, pkg.eos)
        nxt = sc.argmax(axis=1)
        nxt = np.where(done, pkg.pad, nxt)
        for b in range(B):
            seqs[b].append(int(nxt[b]))
            out[b].append(int(nxt[b]))
        done |= nxt == pkg.eos
        if done.all():
            break
        mask = np.concatenate([mask, np.ones((B, 1), np.int64)], 1)
        logits, past = pkg.step(pkg.embed_one(nxt), mask, past)
    return out, first


def beam_search(pkg: Package, emb, ids, mask, gen):
    """Port of GenerationMixin._beam_search (transformers 5.24), do_sample=False, one EOS id."""
    nb, lp, es = gen["num_beams"], gen["length_penalty"], gen["early_stopping"]
    B, P = ids.shape
    max_len = P + gen["max_new_tokens"]
    K = 2 * nb
    # expand every row num_beams times (HF repeat_interleave)
    emb, ids, mask = (np.repeat(x, nb, axis=0) for x in (emb, ids, mask))
    ignore = (mask != 0).argmax(axis=1)
    run_seq = [[list(map(int, ids[b * nb + j])) for j in range(nb)] for b in range(B)]
    run_score = np.full((B, nb), NEG, np.float32)
    run_score[:, 0] = 0
    fin_seq = [[list(run_seq[b][j]) for j in range(nb)] for b in range(B)]
    fin_score = np.full((B, nb), NEG, np.float32)
    fin = np.zeros((B, nb), bool)
    unsat = np.ones(B, bool)
    logits, past = pkg.step(emb, mask, pkg.empty_past(B * nb))
    cur = P
    while True:
        flat = [s for b in range(B) for s in run_seq[b]]
        lp_ = process(log_softmax(logits), flat, ignore, gen, P, pkg.eos)
        V = lp_.shape[1]
        acc = (lp_.reshape(B, nb, V) + run_score[:, :, None]).reshape(B, nb * V)
        src = np.zeros((B, nb), np.int64)
        new_tok = np.zeros((B, nb), np.int64)
        hits_all = True
        for b in range(B):
            order = np.argsort(-acc[b], kind="stable")[:K]
            top_s = acc[b, order]
            beam, tok = order // V, order % V
            cand = [run_seq[b][beam[k]] + [int(tok[k])] for k in range(K)]
            hits = (tok == pkg.eos) | (cur + 1 >= max_len)
            hits_all &= bool(hits.all())
            # running beams for the next step
            rs = top_s + hits.astype(np.float32) * NEG
            keep = np.argsort(-rs, kind="stable")[:nb]
            # finished beams
            fs = (top_s / np.float32((cur + 1 - P) ** lp)).astype(np.float32)
            if fin[b].all() and es is True:
                fs = fs + NEG
            if not unsat[b]:
                fs = fs + NEG
            just = hits & (np.arange(K) < nb)
            fs = fs + (~just).astype(np.float32) * NEG
            m_seq = fin_seq[b] + cand
            m_s = np.concatenate([fin_score[b], fs])
            m_f = np.concatenate([fin[b], just])
            sel = np.argsort(-m_s, kind="stable")[:nb]
            fin_seq[b] = [m_seq[i] for i in sel]
            fin_score[b], fin[b] = m_s[sel], m_f[sel]
            run_seq[b] = [cand[i] for i in keep]
            run_score[b] = rs[keep]
            src[b] = b * nb + beam[keep]
            new_tok[b] = tok[keep]
        cur += 1
        for b in range(B):
            best = run_score[b, 0] / np.float32((cur - P) ** lp)
            worst = np.where(fin[b], fin_score[b].min(), NEG)
            unsat[b] &= bool(np.any(best > worst))
        if not unsat.any() or hits_all or (es is True and fin.all()):
            break
        past = [p[src.reshape(-1)] for p in past]
        mask = np.concatenate([mask, np.ones((B * nb, 1), np.int64)], 1)
        logits, past = pkg.step(pkg.embed_one(new_tok.reshape(-1)), mask, past)
    return [fin_seq[b][0][P:] for b in range(B)]


def trim(seq, eos):
    return seq[: seq.index(eos) + 1] if eos in seq else seq


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("package")
    args = ap.parse_args()
    root = Path(args.package)
    pkg = Package(root)
    ref = json.loads((root / "reference" / "reference.json").read_text())
    failures = 0

    def check(ok, what):
        nonlocal failures
        print(f"  [{'ok' if ok else 'FAIL'}] {what}")
        failures += not ok

    S = pkg.m["preprocess"]["size"]
    u8 = np.fromfile(root / "reference" / "images_u8.bin", np.uint8).reshape(-1, S, S, 3)
    px = np.fromfile(root / "reference" / "pixels_f32.bin", "<f4").reshape(-1, 3, S, S)
    pp = pkg.m["preprocess"]
    mine = (u8.astype(np.float32) / np.float32(pp["value_range"]) - np.asarray(pp["mean"], np.float32)) / \
        np.asarray(pp["std"], np.float32)
    check(np.array_equal(mine.transpose(0, 3, 1, 2), px), "preprocessing of images_u8.bin == pixels_f32.bin")

    for c in ref["cases"]:
        gen = c["generation"]
        seqs = [pkg.prompt_ids(p) for p in c["prompts"]]
        ids, mask = pkg.left_pad(seqs)
        hf_unpadded = [[t for t, m in zip(r, mr) if m] for r, mr in zip(c["input_ids"], c["attention_mask"])]
        check(seqs == hf_unpadded, f"{c['name']}: template input_ids == HF input_ids (padding removed)")
        emb = pkg.prompt_embeds(ids, px[c["images"]])
        if gen["num_beams"] == 1:
            out, first = greedy(pkg, emb, ids, mask, gen)
        else:
            out = beam_search(pkg, emb, ids, mask, gen)
            first = None
        got = [trim(o, pkg.eos) for o in out]
        check(got == c["new_tokens"], f"{c['name']} ({'greedy' if gen['num_beams'] == 1 else 'beam'}, "
                                      f"batch {len(c['images'])}): new tokens == PyTorch generate"
                                      + ("" if got == c["new_tokens"] else f"  got {got} want {c['new_tokens']}"))
        fl = ref["first_step_logits"]
        if first is not None and c["name"] == fl["case"]:
            d = float(np.abs(first[fl["row"]] - np.asarray(fl["logits"])).max())
            check(d < ref["tolerance"]["logits_abs"], f"first-step logits max abs diff {d:.3g}")
    print("verify_decoder: " + ("all checks passed" if not failures else f"{failures} check(s) FAILED"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
