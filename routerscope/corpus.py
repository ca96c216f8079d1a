"""Corpora: documents with language labels (and translation-pair ids when there are any).

    c = routerscope.corpus.builtin()                       # the project's own ja/en pairs
    c = load_corpus("novel.txt", language="ja")            # one document per line or paragraph
    c = load_corpus("data.jsonl", text_field="body", language_field="lang", max_docs=1000)
    c = load_corpus("saved_dataset/", text_field="text", language="en")   # datasets.save_to_disk
    c = load_corpus("hf:wikimedia/wikipedia", config="20231101.ja", split="train",
                    language="ja", max_docs=500)            # streamed from the hub (needs network)

Plain text files are read as strict UTF-8. ``split="auto"`` takes one document per
blank-line-separated paragraph when the file has blank lines, else one per line; the lines
of a paragraph are joined with a space (or with nothing between two Japanese characters).
``max_tokens`` (with a tokenizer) stops once the documents so far hold that many tokens.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Iterable, Iterator

_CJK = re.compile(r"[\u3000-\u30ff\u3400-\u9fff\uff00-\uffef]")


class CorpusError(ValueError):
    """A corpus that cannot be read, with what to do about it."""


@dataclass(frozen=True)
class Corpus:
    """Documents, one language label each, and translation-pair ids (-1 when unpaired).

    Usage: ``routerscope.trace(model, c.texts, tok, language=c.languages, pair_ids=c.pair_ids)``."""

    texts: list[str]
    languages: list[str]
    pair_ids: list[int] = field(default_factory=list)
    name: str = "corpus"
    registers: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.pair_ids:
            object.__setattr__(self, "pair_ids", [-1] * len(self.texts))
        if len(self.languages) != len(self.texts) or len(self.pair_ids) != len(self.texts):
            raise ValueError("Corpus needs one language and one pair id per document")

    def __len__(self) -> int:
        return len(self.texts)

    def select(self, language: str) -> "Corpus":
        keep = [i for i, lang in enumerate(self.languages) if lang == language]
        return Corpus([self.texts[i] for i in keep], [language] * len(keep), [self.pair_ids[i] for i in keep],
                      f"{self.name} [{language}]", [self.registers[i] for i in keep] if self.registers else [])

    @staticmethod
    def concat(corpora: Iterable["Corpus"]) -> "Corpus":
        corpora = list(corpora)
        return Corpus([t for c in corpora for t in c.texts], [x for c in corpora for x in c.languages],
                      [p for c in corpora for p in c.pair_ids], " + ".join(c.name for c in corpora),
                      [r for c in corpora for r in (c.registers or [""] * len(c))])


def builtin() -> Corpus:
    """The built-in bilingual corpus: Japanese sentences with their English translations,
    written for routerscope, across registers (conversation, news, software, science,
    literary narration, instructions). Each pair's two sides share a pair id.

    Usage: ``c = builtin(); c.select("ja").texts[:3]``."""
    source = resources.files("routerscope").joinpath("data/builtin_pairs.jsonl")
    texts, languages, pairs, registers = [], [], [], []
    for line in source.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        for lang in ("ja", "en"):
            texts.append(record[lang])
            languages.append(lang)
            pairs.append(int(record["id"]))
            registers.append(record["register"])
    return Corpus(texts, languages, pairs, "routerscope built-in ja/en pairs", registers)


def _join_lines(lines: list[str]) -> str:
    text = ""
    for line in (x.strip() for x in lines):
        if not line:
            continue
        if text and not (_CJK.match(text[-1]) and _CJK.match(line[0])):
            text += " "
        text += line
    return text


def _read_text_file(path: Path, split: str) -> Iterator[str]:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise CorpusError(f"{path} is not UTF-8 text (undecodable byte at offset {err.start}); convert it first, "
                          f"e.g. `iconv -f SHIFT_JIS -t UTF-8 {path.name} > {path.stem}.utf8.txt`") from None
    lines = text.splitlines()
    if split == "auto":
        split = "paragraphs" if any(not line.strip() for line in lines) else "lines"
    if split == "lines":
        yield from (line.strip() for line in lines if line.strip())
    elif split == "paragraphs":
        for blank, group in itertools.groupby(lines, key=lambda line: not line.strip()):
            if not blank:
                yield _join_lines(list(group))
    else:
        raise CorpusError(f"split must be 'auto', 'lines' or 'paragraphs', got {split!r}")


def _field(record: dict, name: str, where: str) -> str:
    if name not in record:
        raise CorpusError(f"{where} has no field {name!r}; its fields are {sorted(record)}. "
                          f"Choose one with text_field= (CLI: --text-field)")
    value = record[name]
    if not isinstance(value, str):
        raise CorpusError(f"{where}: field {name!r} holds a {type(value).__name__}, not text")
    return value


def _read_jsonl(path: Path, text_field: str, language_field: str | None, pair_field: str | None):
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise CorpusError(f"{path} line {number} is not UTF-8; convert the file to UTF-8") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise CorpusError(f"{path} line {number} is not JSON ({err.msg}); a .jsonl file holds one JSON "
                                  "object per line") from None
            if not isinstance(record, dict):
                raise CorpusError(f"{path} line {number} is a JSON {type(record).__name__}, not an object")
            where = f"{path} line {number}"
            yield (_field(record, text_field, where),
                   _field(record, language_field, where) if language_field else None,
                   record.get(pair_field) if pair_field else None)


def _read_records(records, text_field: str, language_field: str | None, pair_field: str | None, where: str):
    for number, record in enumerate(records):
        yield (_field(record, text_field, f"{where} row {number}"),
               _field(record, language_field, f"{where} row {number}") if language_field else None,
               record.get(pair_field) if pair_field else None)


def _open_dataset_folder(path: Path, split: str | None):
    import datasets

    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        names = list(loaded)
        chosen = split or ("train" if "train" in loaded else names[0] if len(names) == 1 else None)
        if chosen not in loaded:
            raise CorpusError(f"{path} holds splits {names}; choose one with split= (CLI: --split-name)")
        return loaded[chosen]
    return loaded


def _open_hub_dataset(name: str, config: str | None, split: str | None, streaming: bool):
    import datasets

    try:
        return datasets.load_dataset(name, config, split=split or "train", streaming=streaming)
    except Exception as err:  # noqa: BLE001 - offline, unknown name, gated: one message with the cause
        raise CorpusError(f"could not load the Hugging Face dataset {name!r} (config={config!r}, split={split!r}): "
                          f"{type(err).__name__}: {err}. It needs network access to the hub; offline, save it "
                          "once with dataset.save_to_disk(folder) and pass the folder") from None


def load_corpus(source: str | Path, language: str | None = None, *, text_field: str = "text",
                language_field: str | None = None, pair_field: str | None = None, split: str | None = None,
                config: str | None = None, streaming: bool = True, max_docs: int | None = None,
                max_tokens: int | None = None, tokenizer=None) -> Corpus:
    """Load documents from a text file, a JSONL file, a saved ``datasets`` folder, or
    ``"hf:NAME"`` on the Hugging Face hub (streamed). ``"builtin"`` is the built-in corpus.

    language        label for every document (or use language_field for a per-record label)
    split           text files: "auto", "lines" or "paragraphs"; datasets: the split name
    max_docs        stop after this many documents
    max_tokens      stop once the documents hold this many tokens of ``tokenizer``
    """
    if max_tokens is not None and tokenizer is None:
        raise ValueError("max_tokens needs tokenizer= to count tokens")
    source_str = str(source)
    if source_str == "builtin":
        corpus = builtin()
        if language:
            corpus = corpus.select(language)
        rows = zip(corpus.texts, corpus.languages, corpus.pair_ids)
        name = corpus.name
    elif source_str.startswith("hf:"):
        records = _open_hub_dataset(source_str[3:], config, split, streaming)
        rows = _read_records(records, text_field, language_field, pair_field, source_str)
        name = source_str
    else:
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"corpus {path} does not exist (give a .txt/.jsonl file, a datasets folder, "
                                    "'builtin', or 'hf:NAME' for a hub dataset)")
        name = path.name
        if path.is_dir():
            records = _open_dataset_folder(path, split)
            rows = _read_records(records, text_field, language_field, pair_field, str(path))
        elif path.suffix.lower() in (".jsonl", ".ndjson"):
            rows = _read_jsonl(path, text_field, language_field, pair_field)
        else:
            rows = ((text, None, None) for text in _read_text_file(path, split or "auto"))
    texts, languages, pairs = [], [], []
    tokens = 0
    for text, lang, pair in rows:
        if not text.strip():
            continue
        if max_docs is not None and len(texts) >= max_docs:
            break
        if max_tokens is not None and tokens >= max_tokens:
            break
        texts.append(text)
        languages.append(lang or language or "und")
        pairs.append(int(pair) if pair is not None else -1)
        if max_tokens is not None:
            tokens += len(tokenizer(text)["input_ids"])
    if not texts:
        raise CorpusError(f"corpus {source_str} has no non-empty document")
    return Corpus(texts, languages, pairs, name)

