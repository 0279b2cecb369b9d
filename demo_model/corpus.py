"""The demo model's training data: Python's own text and synthetic conversations, tokenized
and packed into fixed-length rows.

Two kinds of rows. Text rows hold the standard library's sources and pydoc's documentation
topics, one file after another; every token is learned. Chat rows hold whole conversations
from `tasks.training_example`; only what the assistant wrote is learned (the loss mask). In
both, a row is a run of documents: each token carries its position within its document and
its document's number, so attention never crosses a document and positions start at 0 as
they do when the model serves one conversation.
"""

from __future__ import annotations

import multiprocessing
import random
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from radixlm.demo_model import chat_format as fmt
from radixlm.demo_model import tasks

# stdlib folders of generated tables, third-party packages or another language's sources
_SKIPPED_DIRS = {"site-packages", "lib2to3", "turtledemo", "__pycache__", "encodings"}
_MAX_FILE_BYTES = 200_000


def python_texts() -> list[str]:
    """The standard library's .py sources, its tests included (generated tables left out) and pydoc's
    documentation topics, in a fixed order: the text that ships with every Python."""
    from pydoc_data import topics

    texts = [topics.topics[key] for key in sorted(topics.topics)]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.rglob("*.py")):
        if _SKIPPED_DIRS & set(path.relative_to(stdlib).parts[:-1]) or path.stat().st_size > _MAX_FILE_BYTES:
            continue
        try:
            texts.append(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, OSError):
            continue
    return texts


def _conversations(job: tuple[int, int, int]) -> list[tuple[str, list[tuple[int, int]]]]:
    seed, chunk, count = job
    rng = random.Random(f"demo-model:{seed}:{chunk}")
    out = []
    for _ in range(count):
        example = tasks.training_example(rng)
        out.append(fmt.render_chat(example.messages, tools=example.tools))
    return out


def sample_conversations(count: int, seed: int) -> list[str]:
    """Rendered conversations for training the tokenizer (a generator of their own)."""
    return [text for text, _ in _conversations((seed, -1, count))]


def train_tokenizer(texts: list[str], chats: list[str], vocab_size: int):
    """A byte-level BPE tokenizer (single digits, ChatML specials, tool tags as tokens of their
    own) trained on Python's text and a sample of the conversations; `vocab_size` in all."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(fmt.TOOL_TOKENS),
        min_frequency=2,
        special_tokens=list(fmt.SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts + chats, trainer=trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in fmt.TOOL_TOKENS])
    if tok.get_vocab_size() != vocab_size:
        raise RuntimeError(f"tokenizer has {tok.get_vocab_size()} tokens, expected {vocab_size}")
    return tok


@dataclass
class Rows:
    """Packed rows: tokens, learned-target mask, position in document, document number."""

    tokens: np.ndarray  # (rows, seq_len) int32
    learn: np.ndarray  # (rows, seq_len) bool: token t is a training target (predicted from t-1)
    positions: np.ndarray  # (rows, seq_len) int32
    docs: np.ndarray  # (rows, seq_len) int32, unique within a row; padding has its own


def pack(documents: list[tuple[list[int], list[bool]]], seq_len: int, pad_id: int) -> Rows:
    """Documents (tokens, learned) into rows of seq_len. Conversations longer than a row are
    dropped (counted by the caller); a text longer than a row is split into row-sized pieces."""
    pieces: list[tuple[list[int], list[bool]]] = []
    for ids, learn in documents:
        for start in range(0, len(ids), seq_len):
            pieces.append((ids[start : start + seq_len], learn[start : start + seq_len]))
    rows_tokens, rows_learn, rows_pos, rows_docs = [], [], [], []
    cur_t: list[int] = []
    cur_l: list[bool] = []
    cur_p: list[int] = []
    cur_d: list[int] = []

    def flush() -> None:
        pad = seq_len - len(cur_t)
        rows_tokens.append(cur_t + [pad_id] * pad)
        rows_learn.append(cur_l + [False] * pad)
        rows_pos.append(cur_p + list(range(pad)))
        next_doc = (cur_d[-1] + 1) if cur_d else 0
        rows_docs.append(cur_d + [next_doc] * pad)

    doc = 0
    for ids, learn in pieces:
        if len(cur_t) + len(ids) > seq_len:
            flush()
            cur_t, cur_l, cur_p, cur_d, doc = [], [], [], [], 0
        cur_t += ids
        # a document's first token has nothing of its own document before it: never a target
        cur_l += [False] + list(learn[1:])
        cur_p += list(range(len(ids)))
        cur_d += [doc] * len(ids)
        doc += 1
    if cur_t:
        flush()
    return Rows(
        tokens=np.asarray(rows_tokens, dtype=np.int32),
        learn=np.asarray(rows_learn, dtype=bool),
        positions=np.asarray(rows_pos, dtype=np.int32),
        docs=np.asarray(rows_docs, dtype=np.int32),
    )


def text_documents(tokenizer, texts: list[str]) -> list[tuple[list[int], list[bool]]]:
    eot = tokenizer.token_to_id(fmt.END_OF_TEXT)
    docs = []
    for enc in tokenizer.encode_batch(texts):
        ids = enc.ids + [eot]
        docs.append((ids, [True] * len(ids)))
    return docs


def chat_documents(
    tokenizer, chats: list[tuple[str, list[tuple[int, int]]]], seq_len: int
) -> tuple[list[tuple[list[int], list[bool]]], int]:
    """Tokenized conversations with their learned-token masks (a token is learned when it
    starts inside an assistant span), and how many were too long for a row."""
    docs, dropped = [], 0
    encodings = tokenizer.encode_batch([text for text, _ in chats])
    for (text, spans), enc in zip(chats, encodings):
        if len(enc.ids) > seq_len:
            dropped += 1
            continue
        in_span = np.zeros(len(text) + 1, dtype=bool)
        for a, b in spans:
            in_span[a:b] = True
        starts = np.fromiter((start for start, _ in enc.offsets), dtype=np.int64, count=len(enc.ids))
        docs.append((enc.ids, in_span[starts].tolist()))
    return docs, dropped


_WORKER_TOKENIZER = None  # set before the pool forks: each worker tokenizes its own chunk


def _chat_rows(job: tuple[int, int, int, int]) -> tuple[Rows, int]:
    seed, chunk, count, seq_len = job
    tokenizer = _WORKER_TOKENIZER
    docs, dropped = chat_documents(tokenizer, _conversations((seed, chunk, count)), seq_len)
    return pack(docs, seq_len, tokenizer.token_to_id(fmt.PAD)), dropped


def chat_rows(tokenizer, count: int, seed: int, seq_len: int, workers: int | None = None) -> tuple[Rows, int]:
    """`count` training conversations, tokenized and packed in parallel chunks of 5,000 (each
    chunk with its own generator, so the rows are the same whatever the number of workers);
    also how many conversations were too long for a row."""
    global _WORKER_TOKENIZER
    _WORKER_TOKENIZER = tokenizer
    chunk = 5000
    jobs = [(seed, i, min(chunk, count - i * chunk), seq_len) for i in range((count + chunk - 1) // chunk)]
    workers = workers or max(1, min(len(jobs), multiprocessing.cpu_count()))
    if workers == 1 or sys.platform != "linux":
        results = [_chat_rows(job) for job in jobs]
    else:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            results = pool.map(_chat_rows, jobs)
    rows = Rows(
        *(
            np.concatenate([getattr(r, f) for r, _ in results])
            for f in ("tokens", "learn", "positions", "docs")
        )
    )
    return rows, sum(d for _, d in results)


def shuffled(rows: Rows, seed: int) -> Rows:
    order = np.random.default_rng(seed).permutation(len(rows.tokens))
    return Rows(rows.tokens[order], rows.learn[order], rows.positions[order], rows.docs[order])
