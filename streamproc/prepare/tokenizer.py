"""Tokenizers without transformers: tokenizer.json through the `tokenizers` library, the rest of a
model's tokenizer files read as transformers reads them, and chat templates rendered by the same
jinja2 environment transformers builds.

transformers imports torch when it loads a tokenizer (seconds of start-up, in every worker); the
data path needs none of it. What transformers adds on top of tokenizer.json is small and is
replicated here: the added tokens of tokenizer_config.json, the named special tokens (bos, eos,
pad, ...), and the chat template (from tokenizer_config.json, or chat_template.jinja and
additional_chat_templates/*.jinja, which take priority). `render_chat` follows
transformers.utils.chat_template_utils (`_compile_jinja_template`, `render_jinja_template`) and
`apply_chat_template`'s template variables; tests compare its text and ids with transformers'.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import types
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import tokenizers

CONFIG = "tokenizer_config.json"
TOKENIZER_FILE = "tokenizer.json"
TEMPLATE_FILE = "chat_template.jinja"
TEMPLATE_DIR = "additional_chat_templates"
SPECIAL_MAP = "special_tokens_map.json"
NAMED_SPECIALS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
"""transformers' SPECIAL_TOKENS_ATTRIBUTES: the named tokens a chat template sees as variables."""

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


class TokenizerError(ValueError):
    """A tokenizer that cannot be found or read; the message names the path or id."""


@dataclass(slots=True)
class Tokenizer:
    """A fast tokenizer and what its model directory says about it: what the data path uses of a
    transformers tokenizer, under the same names."""

    backend_tokenizer: tokenizers.Tokenizer
    config: dict  # tokenizer_config.json, as read
    chat_template: str | dict[str, str] | None
    special_tokens_map: dict[str, str]  # named special tokens (bos_token, eos_token, ...) -> text
    source: Path | None = None  # the directory it was read from
    _added_by_config: list[str] = field(default_factory=list)

    # ------------------------------------------------------------------------- vocabulary

    def __len__(self) -> int:
        return self.backend_tokenizer.get_vocab_size(with_added_tokens=True)

    def get_vocab(self) -> dict[str, int]:
        return self.backend_tokenizer.get_vocab(with_added_tokens=True)

    @property
    def added_tokens_decoder(self) -> dict[int, tokenizers.AddedToken]:
        return self.backend_tokenizer.get_added_tokens_decoder()

    def get_added_vocab(self) -> dict[str, int]:
        return {t.content: i for i, t in sorted(self.added_tokens_decoder.items())}

    def convert_tokens_to_ids(self, token: str) -> int | None:
        return self.backend_tokenizer.token_to_id(token)

    def _special_id(self, name: str) -> int | None:
        t = self.special_tokens_map.get(name)
        return None if t is None else self.backend_tokenizer.token_to_id(t)

    @property
    def pad_token_id(self) -> int | None:
        return self._special_id("pad_token")

    @property
    def eos_token_id(self) -> int | None:
        return self._special_id("eos_token")

    @property
    def bos_token_id(self) -> int | None:
        return self._special_id("bos_token")

    def add_tokens(self, tokens: Sequence[str | tokenizers.AddedToken], special_tokens: bool = False) -> int:
        """Add tokens the vocabulary lacks (as transformers does: not normalized); the count added."""
        new = [t if isinstance(t, tokenizers.AddedToken) else tokenizers.AddedToken(t, special=special_tokens, normalized=False) for t in tokens]
        return self.backend_tokenizer.add_special_tokens(new) if special_tokens else self.backend_tokenizer.add_tokens(new)

    # ------------------------------------------------------------------------- text

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self.backend_tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = False) -> list[list[int]]:
        return [e.ids for e in self.backend_tokenizer.encode_batch_fast(list(texts), add_special_tokens=add_special_tokens)]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self.backend_tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def get_chat_template(self, chat_template: str | None = None) -> str:
        """The template text: `chat_template` itself, or the name of one of the model's templates,
        or (None) the model's default, as transformers picks it."""
        own = self.chat_template
        if isinstance(own, dict):
            if chat_template is None:
                if "default" not in own:
                    raise TokenizerError(f"the tokenizer has several chat templates ({', '.join(sorted(own))}) and no default")
                return own["default"]
            return own.get(chat_template, chat_template)
        if chat_template is None:
            if own is None:
                raise TokenizerError("the tokenizer has no chat template")
            return own
        return chat_template

    def apply_chat_template(self, messages: Sequence[dict], chat_template: str | None = None, tokenize: bool = False, add_generation_prompt: bool = False, **kwargs) -> str | list[int]:
        """The conversation rendered as transformers renders it; its ids with tokenize=True."""
        text = render_chat(self.get_chat_template(chat_template), messages, {**self.special_tokens_map, **kwargs}, add_generation_prompt)
        return self.encode(text) if tokenize else text

    # ------------------------------------------------------------------------- files

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """tokenizer.json, tokenizer_config.json (its added tokens brought up to date) and the
        source's template and special-token files: a directory both this module and transformers load."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        self.backend_tokenizer.save(str(out / TOKENIZER_FILE))
        config = dict(self.config)
        config["added_tokens_decoder"] = {
            str(i): {"content": t.content, "lstrip": t.lstrip, "normalized": t.normalized, "rstrip": t.rstrip, "single_word": t.single_word, "special": t.special}
            for i, t in sorted(self.added_tokens_decoder.items())
        }
        (out / CONFIG).write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        if self.source is not None:
            for name in (TEMPLATE_FILE, SPECIAL_MAP, TEMPLATE_DIR):
                src = self.source / name
                if src.is_dir():
                    shutil.copytree(src, out / name, dirs_exist_ok=True)
                elif src.is_file():
                    shutil.copyfile(src, out / name)


# ----------------------------------------------------------------------------- loading

DEFAULT_TOKENIZER = Path(__file__).parents[1] / "data" / "tokenizers" / "qwen2.5-0.5b-instruct"
DEFAULT_TOKENIZER_NAME = "Qwen/Qwen2.5-0.5B-Instruct"


def load_tokenizer(name_or_dir: str | os.PathLike | None = None) -> Tokenizer:
    """A fast tokenizer of its own (the caller may extend it): the shipped Qwen2.5-0.5B-Instruct
    one (offline) for None, `default` or its Hub id; otherwise any local directory or Hub id.
    TokenizerError names a path or id that cannot be loaded."""
    if name_or_dir in (None, "", "default", DEFAULT_TOKENIZER_NAME):
        name_or_dir = DEFAULT_TOKENIZER
    return load(name_or_dir)


def cached_tokenizer(name_or_dir: str | os.PathLike | None = None) -> Tokenizer:
    """load_tokenizer's tokenizer, loaded once per process (loading takes a second or more) and
    shared by every user in it: never mutate it. A directory whose tokenizer.json changed since
    (a pack run that extended a tokenizer into the same place) is loaded again."""
    path = Path(name_or_dir or DEFAULT_TOKENIZER) / TOKENIZER_FILE
    stamp = (path.stat().st_mtime_ns, path.stat().st_size) if path.is_file() else None
    return _cached(str(name_or_dir or "default"), stamp)


@lru_cache(maxsize=8)
def _cached(name: str, stamp) -> Tokenizer:
    return load_tokenizer(name)



def load(name_or_dir: str | os.PathLike) -> Tokenizer:
    """A tokenizer from a local directory, or a Hub id through huggingface_hub's file downloads
    (its cache and HF_HUB_OFFLINE apply). TokenizerError names what is missing."""
    path = Path(name_or_dir).expanduser()
    if path.is_dir():
        return _from_dir(path)
    name = str(name_or_dir)
    if path.exists():
        raise TokenizerError(f"tokenizer {name}: not a directory (give the directory that holds tokenizer.json)")
    if not _HUB_ID.fullmatch(name) or name.startswith((".", "~")) or os.sep in name.replace("/", "", 1):
        raise TokenizerError(f"tokenizer {name}: no such directory")
    return _from_dir(_download(name), label=name)


def _download(repo: str) -> Path:
    try:
        from huggingface_hub import hf_hub_download, list_repo_files
        from huggingface_hub.errors import EntryNotFoundError
    except ImportError as e:  # pragma: no cover - a dependency
        raise TokenizerError(f"tokenizer {repo}: no such directory, and huggingface_hub is not installed to fetch it") from e
    try:
        path = Path(hf_hub_download(repo, TOKENIZER_FILE)).parent
    except Exception as e:
        raise TokenizerError(f"tokenizer {repo}: no such directory, and not found on the Hugging Face Hub or in its cache ({type(e).__name__})") from None
    for name in (CONFIG, TEMPLATE_FILE, SPECIAL_MAP):
        try:
            hf_hub_download(repo, name)
        except EntryNotFoundError:
            pass
        except Exception:  # offline with only some files cached: what is there is used
            pass
    try:
        for f in list_repo_files(repo):
            if f.startswith(TEMPLATE_DIR + "/") and f.endswith(".jinja"):
                hf_hub_download(repo, f)
    except Exception:
        pass
    return path


def _from_dir(d: Path, label: str | None = None) -> Tokenizer:
    label = label or str(d)
    file = d / TOKENIZER_FILE
    if not file.is_file():
        raise TokenizerError(f"tokenizer {label}: no {TOKENIZER_FILE} in {d} (a fast tokenizer's file is needed)")
    try:
        backend = tokenizers.Tokenizer.from_file(str(file))
        config = _read_json(d / CONFIG)
        legacy = _read_json(d / SPECIAL_MAP)
    except Exception as e:  # a damaged or foreign file: the Rust error says what and where
        raise TokenizerError(f"tokenizer {label}: cannot read {d}: {e}") from None

    # The added tokens of the config that tokenizer.json lacks, as transformers adds them.
    have = {t.content for t in backend.get_added_tokens_decoder().values()}
    added: list[str] = []
    for _, spec in sorted((config.get("added_tokens_decoder") or {}).items(), key=lambda kv: int(kv[0])):
        if spec["content"] not in have:
            tok = tokenizers.AddedToken(spec["content"], single_word=spec.get("single_word", False), lstrip=spec.get("lstrip", False), rstrip=spec.get("rstrip", False), normalized=spec.get("normalized", not spec.get("special", False)), special=spec.get("special", False))
            (backend.add_special_tokens if tok.special else backend.add_tokens)([tok])
            have.add(spec["content"])
            added.append(spec["content"])

    specials = {}
    for key in NAMED_SPECIALS:
        value = config.get(key, legacy.get(key))
        if isinstance(value, dict):
            value = value.get("content")
        if value is not None:
            specials[key] = str(value)
    extra = config.get("extra_special_tokens")
    if isinstance(extra, dict):  # model-specific named tokens (e.g. image_token) are template variables too
        specials.update({k: str(v["content"] if isinstance(v, dict) else v) for k, v in extra.items()})
    missing = [t for t in specials.values() if t not in have and backend.token_to_id(t) is None]
    if missing:
        backend.add_special_tokens([tokenizers.AddedToken(t, special=True, normalized=False) for t in missing])

    return Tokenizer(backend, config, _templates(d, config), specials, d, added)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _templates(d: Path, config: dict) -> str | dict[str, str] | None:
    """The chat template(s): separate .jinja files take priority over the config's entry."""
    found = {}
    if (d / TEMPLATE_FILE).is_file():
        found["default"] = (d / TEMPLATE_FILE).read_text(encoding="utf-8")
    if (d / TEMPLATE_DIR).is_dir():
        for f in sorted((d / TEMPLATE_DIR).glob("*.jinja")):
            found[f.name.removesuffix(".jinja")] = f.read_text(encoding="utf-8")
    if found:
        return found["default"] if list(found) == ["default"] else found
    t = config.get("chat_template")
    if isinstance(t, list):
        return {x["name"]: x["template"] for x in t}
    return t


# ----------------------------------------------------------------------------- chat templates


def render_chat(template: str, messages: Sequence[dict], variables: dict[str, Any] | None = None, add_generation_prompt: bool = False, tools: list[dict] | None = None, documents: list[dict] | None = None) -> str:
    """`template` rendered over `messages` as transformers' apply_chat_template(tokenize=False)
    renders it: messages without their None values, reasoning aliased under the names templates
    read, the named special tokens and `variables` as template variables."""
    chat = [_alias_reasoning({k: v for k, v in m.items() if v is not None}) for m in messages]
    return compile_template(template).render(messages=chat, tools=tools, documents=documents, add_generation_prompt=add_generation_prompt, **(variables or {}))


_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")
_DICT_ATTRIBUTES = frozenset(dir(dict))
"""What `getattr` finds on a dict: any other name read as an attribute is a key."""
_FORMATS = ("format", "format_map")
"""str methods the sandbox always wraps (they reach attributes of their arguments)."""


def _alias_reasoning(m: dict) -> dict:
    reasoning = next((m[k] for k in _REASONING_FIELDS if m.get(k) is not None), None)
    return m if reasoning is None else {"thinking": reasoning, **m, "reasoning_content": reasoning}


@lru_cache(maxsize=32)
def compile_template(template: str):
    """The template compiled in transformers' environment: sandboxed, trim_blocks and
    lstrip_blocks, loop controls, the `{% generation %}` tag, tojson without HTML escaping,
    raise_exception, strftime_now, and the restricted dict() and namespace()."""
    import jinja2
    import jinja2.ext
    import jinja2.nodes
    import jinja2.runtime
    import jinja2.utils
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(jinja2.ext.Extension):
        """`{% generation %}...{% endgeneration %}` renders its body (transformers tracks the
        body's span for assistant masks; the text is the same)."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format):
        return datetime.now().strftime(format)

    class TemplateDict:
        def __call__(self, *args, **kwargs):
            return dict(*args, **kwargs)

        def fromkeys(self, *args, **kwargs):
            return dict.fromkeys(*args, **kwargs)

    class TemplateNamespace(jinja2.utils.Namespace):
        def __init__(*args, **kwargs):
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check_name(name):
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(f"Chat templates cannot store underscore-prefixed attributes on a namespace, but got {name!r}.")

    # Classes the sandbox judges by class and attribute name alone (none fakes __class__), and
    # those of them whose attributes are the class's (a namespace's fields may hold anything).
    fixed = {str, int, float, bool, list, tuple, dict, jinja2.runtime.LoopContext}
    judged = fixed | {TemplateNamespace}

    class Sandbox(ImmutableSandboxedEnvironment):
        """transformers' sandbox, giving its answers sooner where they are known in advance (its
        checks were most of a render's time): a dict's key read as an attribute (`message.role`:
        the sandbox tries the attribute first and catches the AttributeError), whether an
        attribute of a `judged` class is safe (worked out once per class and name), an attribute
        of a `fixed` class found safe before (str methods, `loop.index0`) taken as is, and a call
        of a str method made directly (the sandbox finds it safe and passes it no context).
        str.format and format_map always go through the sandbox, which wraps them."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._safe: dict[tuple[type, str], bool] = {}

        def getattr(self, obj, attribute):
            if type(attribute) is str:
                if type(obj) is dict and attribute not in _DICT_ATTRIBUTES:
                    return obj[attribute] if attribute in obj else self.undefined(obj=obj, name=attribute)
                if type(obj) in fixed and self._safe.get((type(obj), attribute)) and attribute not in _FORMATS:
                    try:
                        return getattr(obj, attribute)
                    except AttributeError:  # a property that raised it: the sandbox's own answer
                        pass
            return super().getattr(obj, attribute)

        def call(self, context, obj, /, *args, **kwargs):
            if type(obj) is types.BuiltinMethodType and type(obj.__self__) is str and obj.__name__ not in _FORMATS:
                kwargs.pop("_loop_vars", None)
                kwargs.pop("_block_vars", None)
                return obj(*args, **kwargs)
            return super().call(context, obj, *args, **kwargs)

        def is_safe_attribute(self, obj, attr, value):
            key = (type(obj), attr)
            if key[0] not in judged:
                return super().is_safe_attribute(obj, attr, value)
            if key not in self._safe:
                self._safe[key] = super().is_safe_attribute(obj, attr, value)
            return self._safe[key]

    env = Sandbox(trim_blocks=True, lstrip_blocks=True, extensions=[Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    env.globals["dict"] = TemplateDict()
    env.globals["namespace"] = TemplateNamespace
    return env.from_string(template)
