"""Pieces of the sentence-transformers folder layout shared by the PyLate and raw families (and the check that a
vision checkpoint carries no module tree its family would skip).

``modules.json`` lists the pipeline (``Transformer`` at some path, then ``Dense`` modules in
``N_Dense/`` with ``config.json`` + ``model.safetensors``, then masking/normalize modules);
``sentence_bert_config.json`` holds the Transformer's own settings.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from torch import nn

from tokembed.errors import ModelError
from tokembed.models.base import (
    DenseLayer,
    LoadOptions,
    TokenModel,
    activation_from_name,
    hidden_size_of,
    load_backbone,
    model_max_length,
    position_limit,
    read_json,
)
from tokembed.models.st_settings import PYLATE_MARKERS, read_lengths
from tokembed.models.weights import load_tensors, path_inside, tensor_names
from tokembed.settings import ColbertConfig


def read_modules(path: Path) -> list[dict]:
    """``modules.json``'s modules in pipeline order; a module folder outside the checkpoint is refused."""
    modules = read_json(path / "modules.json")
    if modules is None:
        return []
    if not isinstance(modules, list):
        raise ModelError(f"{path / 'modules.json'}: expected a list of modules")
    for module in modules:
        if isinstance(module, dict) and "path" in module:
            path_inside(path, module["path"], path / "modules.json", "module folder")
    return sorted(modules, key=lambda module: module.get("idx", 0))


def _type_name(module: dict) -> str:
    return module.get("type", "").rsplit(".", 1)[-1]


def modules_of_type(modules: list[dict], type_name: str) -> list[dict]:
    return [module for module in modules if _type_name(module) == type_name]


def transformer_folder(path: Path, modules: list[dict]) -> Path:
    found = modules_of_type(modules, "Transformer")
    return path / found[0].get("path", "") if found else path


def transformer_settings(path: Path, modules: list[dict]) -> dict[str, Any]:
    """The Transformer module's own config: ``sentence_bert_config.json`` (or ``config.json`` of a sub-folder)."""
    folder = transformer_folder(path, modules)
    return read_json(folder / "sentence_bert_config.json") or {}


def load_dense_stack(path: Path, modules: list[dict], trust_remote_code: bool, multi_vector: bool) -> nn.Sequential:
    """Every ``Dense`` module in pipeline order, with bias and activation as stored. Its weights are what
    sentence-transformers' ``load_torch_weights`` reads: ``model.safetensors``, else ``pytorch_model.bin``."""
    layers = []
    for module in modules_of_type(modules, "Dense"):
        folder = path / module.get("path", "")
        config = read_json(folder / "config.json")
        if not isinstance(config, dict):
            raise ModelError(f"{folder}: a Dense module without a config.json object (sentence-transformers and "
                             "PyLate cannot build it)")
        names = tensor_names(folder, indexed=False)
        with_bias = config.get("bias", "linear.bias" in names)  # a config that does not say: what the file holds
        wanted = {"linear.weight", "linear.bias"} if with_bias else {"linear.weight"}
        tensors = load_tensors(folder, wanted, required=wanted, indexed=False)
        check_dense_agrees(folder, config, names - wanted, tensors["linear.weight"])
        bias = tensors.get("linear.bias")
        if config.get("use_residual"):
            raise ModelError(f"{folder}: Dense with use_residual is not supported")
        activation = dense_activation(folder, module.get("type", ""), config, multi_vector, trust_remote_code)
        layers.append(DenseLayer(tensors["linear.weight"], bias, activation))
    return nn.Sequential(*layers)


def dense_activation(
    folder: Path, module_type: str, config: dict, multi_vector: bool, trust_remote_code: bool
) -> nn.Module:
    """The stored activation; where ``config.json`` names none, the reference's default: sentence-transformers'
    ``Dense`` constructor (Tanh) for its own Dense in a multi-vector pipeline. Refused where the references
    disagree: PyLate's Dense defaults to Identity but sentence-transformers loads it as its own Dense (Tanh), and
    vLLM (the raw families' reference) applies no activation where sentence-transformers applies Tanh."""
    if "activation_function" in config:
        name = config["activation_function"]
        if not isinstance(name, str) or not name:
            raise ModelError(f"{folder / 'config.json'}: activation_function {name!r} is not a class name")
        return activation_from_name(name, trust_remote_code)
    if multi_vector and module_type.startswith("sentence_transformers."):
        return nn.Tanh()
    why = ("PyLate's Dense would apply Identity, sentence-transformers' Tanh" if module_type.startswith("pylate.")
           else "vLLM would apply no activation, sentence-transformers' Dense Tanh")
    raise ModelError(f"{folder / 'config.json'}: no activation_function key; {why}",
                     hint="write the activation the model was trained with into its config.json")


def check_dense_agrees(folder: Path, config: dict, unused: set[str], weight) -> None:
    """What sentence-transformers' strict ``load_state_dict`` refuses: a tensor its config does not make (a bias
    with ``"bias": false``; any other), or a weight of another shape than ``in_features`` x ``out_features``."""
    if unused:
        raise ModelError(f"{folder}: tensors {sorted(unused)} that its config.json does not use "
                         f"(bias: {config.get('bias', True)})")
    expected = (config.get("out_features"), config.get("in_features"))
    for stated, actual, name in zip(expected, weight.shape, ("out_features", "in_features")):
        if stated is not None and stated != actual:
            raise ModelError(f"{folder}: config.json says {name} {stated}, the weight is {list(weight.shape)}")


def check_module_folders_listed(path: Path, modules: list[dict],
                                hint: str = "list it in modules.json, or remove the folder") -> None:
    """A sentence-transformers module folder (``1_Dense``, ...) that holds weights but that ``modules.json`` does not
    list (or no ``modules.json`` at all) would be left out of the pipeline: its projection never applied, the
    backbone's hidden states written as the vectors. Refused instead of guessed."""
    listed = {_module_path(module) for module in modules}
    for folder in sorted(path.iterdir()):
        unlisted = folder.is_dir() and _MODULE_FOLDER.match(folder.name) and folder.name not in listed
        if unlisted and _holds_weights(folder):
            what = "modules.json does not list it" if modules else "the checkpoint has no modules.json"
            raise ModelError(f"{folder}: a sentence-transformers module with weights, but {what}; its weights would "
                             "not be used", hint=hint)


def _module_path(module: dict) -> str:
    return str(module.get("path", "")).strip("/")


def _holds_weights(folder: Path) -> bool:
    return any(file.suffix in (".safetensors", ".bin") for file in folder.iterdir() if file.is_file())


_MODULE_FOLDER = re.compile(r"^\d+_\w+$")


def check_module_types(path: Path, modules: list[dict]) -> None:
    """A module tokembed does not apply (sentence-transformers' ``CNN``, ``LSTM``, ``WordWeights``, ``TokenPooling``,
    a ``Router``, a package's own class) would be skipped, its effect on the vectors lost: refused. Known are the
    modules tokembed reproduces and those that cannot change a token vector (``Pooling`` and a sentence-level
    ``Normalize`` act on the pooled vector, ``Dropout`` is off at inference)."""
    for module in modules:
        module_type = str(module.get("type", ""))
        if not (module_type.startswith(_KNOWN_PACKAGES) and _type_name(module) in _KNOWN_MODULES):
            raise ModelError(f"{path / 'modules.json'}: module {module.get('path') or module.get('name', '?')!r} is a "
                             f"{module_type!r}, which tokembed does not apply; its vectors would not be the model's",
                             hint="tokembed models lists the layouts it reads")
    if len(modules_of_type(modules, "Transformer")) > 1:
        raise ModelError(f"{path / 'modules.json'}: more than one Transformer module; tokembed runs one backbone")


_KNOWN_PACKAGES = ("sentence_transformers.", "pylate.")
_KNOWN_MODULES = ("Transformer", "Dense", "MultiVectorMask", "Normalize", "Pooling", "Dropout")


def check_vision_modules(path: Path, family: str) -> None:
    """A vision family loads the checkpoint folder itself, with its own projection and per-token L2, and applies no
    sentence-transformers module: a module tree beside it may hold only what leaves its vectors as they are. That is
    the module at the folder's root (the model the family loads: a ``Transformer``, or a remote-code save's own
    class), ``Pooling`` (it pools into a sentence vector, never a token vector), ``Dropout`` (off at inference),
    ``Normalize`` (a sentence-level one never reaches the token vectors; a token-level one repeats the L2 the family
    already applies, a masked zero vector staying zero) and a ``MultiVectorMask`` with no skiplist and no
    ``keep_only_token_ids`` (it keeps the attention mask: what sentence-transformers 6.2 saves for a
    ``*ForRetrieval`` checkpoint). Any other module (a ``Dense``, a mask that drops vectors, a ``Transformer`` in a
    sub-folder) and any module folder with weights, listed or not, would be skipped: refused."""
    modules = read_modules(path)
    # the module at the root is the model the family loads itself, whatever class a remote-code save names for it
    check_module_types(path, [module for module in modules if _module_path(module)])
    for module in modules:
        if not _leaves_vision_vectors(path, module):
            _refuse_vision_module(path, module, family)
    check_module_folders_listed(path, modules, hint=_VISION_HINT)
    roots = [module for module in modules if not _module_path(module)]
    if roots:
        own_transformer = any(_type_name(root) == "Transformer"
                              and str(root.get("type", "")).startswith(_KNOWN_PACKAGES) for root in roots)
        _refuse_settings_sentence_transformers_would_apply(path, family, own_transformer)


def _refuse_settings_sentence_transformers_would_apply(path: Path, family: str, own_transformer: bool) -> None:
    """A vision checkpoint that sentence-transformers loads as a module tree: settings there that the family's own
    code does not have would give other vectors in each reference. Prompts, PyLate's prefixes and a PyLate v3 model
    type apply whatever class the root module is (a remote-code save's own); lengths and query expansion only
    through sentence-transformers' own ``Transformer`` (``own_transformer``). Settings that leave them off
    (``query_expansion: null``, ``do_query_expansion: false``, a null length) load."""
    found = _settings_sentence_transformers_would_apply(path, own_transformer)
    if found:
        raise ModelError(f"{path}: {found[0]} is a sentence-transformers setting that family {family}'s own code "
                         "does not apply: the two references give other vectors",
                         hint="remove it to encode as the family's own code does")


def _settings_sentence_transformers_would_apply(path: Path, own_transformer: bool) -> list[str]:
    flat, own = "config_sentence_transformers.json", "sentence_bert_config.json"
    st_config = read_json(path / flat) or {}
    found = [f"{flat} prompts {key}" for key, value in (st_config.get("prompts") or {}).items() if value]
    found += [f"{flat} {key}" for key in ("query_prefix", "document_prefix") if st_config.get(key)]
    if st_config.get("model_type") == "ColBERT":  # a PyLate v3 save: a punctuation skiplist is appended
        found.append(f"{flat} model_type 'ColBERT'")
    if not own_transformer:
        return found
    transformer = read_json(path / own) or {}
    lengths = read_lengths(st_config, path / flat, transformer, path / own)
    if lengths.expansion is not None and lengths.width_setting[1] == "query_length":  # from PyLate's flat keys
        marker = next(key for key in PYLATE_MARKERS if key in st_config)
        found.append(f"{flat} {marker} (it turns query expansion on)")
    elif lengths.expansion is not None:
        found.append(f"{lengths.expansion_file.name} query_expansion")
    for key, value in (("query_length", lengths.query_cap), ("document_length", lengths.document_length)):
        if value is not None:
            found.append(f"{own if key in transformer else flat} {key}")
    return found


def _leaves_vision_vectors(path: Path, module: dict) -> bool:
    name = _type_name(module)
    if name == "MultiVectorMask":
        config = read_json(path / _module_path(module) / "config.json") or {}
        return not config.get("skiplist_words") and not config.get("keep_only_token_ids")
    return name in ("Pooling", "Normalize", "Dropout") or not _module_path(module)


def _refuse_vision_module(path: Path, module: dict, family: str) -> None:
    where = _module_path(module)
    if where and (path / where).is_dir() and _holds_weights(path / where):
        raise ModelError(f"{path / where}: a sentence-transformers {_type_name(module)} module with weights that "
                         f"modules.json lists, but family {family} loads the checkpoint folder alone and applies no "
                         "module; its weights would not be used", hint=_VISION_HINT)
    raise ModelError(f"{path / 'modules.json'}: module {where or module.get('name', '?')!r} is a "
                     f"{module.get('type')!r}, which family {family} does not apply; its vectors would not be the "
                     "model's", hint=_VISION_HINT)


_VISION_HINT = ("tokembed's vision families apply no sentence-transformers module: remove the module (its folder and "
                "any modules.json entry) only if the model's vectors are meant without it")


def module_config(path: Path, modules: list[dict], type_name: str) -> dict[str, Any] | None:
    found = modules_of_type(modules, type_name)
    if not found:
        return None
    return read_json(path / found[0].get("path", "") / "config.json") or {}


def apply_lowercase(tokenizer: Any) -> None:
    """Make a fast tokenizer lowercase its input, as sentence-transformers' ``do_lower_case`` does."""
    from tokenizers.normalizers import Lowercase
    from tokenizers.normalizers import Sequence as NormalizerSequence

    backend = tokenizer.backend_tokenizer
    current = backend.normalizer
    if isinstance(current, Lowercase) or (
        isinstance(current, NormalizerSequence) and any(isinstance(n, Lowercase) for n in current)
    ):
        return
    parts = [Lowercase()]
    if isinstance(current, NormalizerSequence):
        parts += list(current)
    elif current is not None:
        parts.append(current)
    backend.normalizer = NormalizerSequence(parts)


def load_st_folder(family: str, path: Path, options: LoadOptions, colbert: ColbertConfig | None) -> TokenModel:
    """Backbone (at the ``Transformer`` module's path) + every ``Dense`` as the projection, lowercasing and
    ``max_seq_length`` as ``sentence_bert_config.json`` says. A plain checkpoint folder loads the same way."""
    modules = read_modules(path)
    check_module_types(path, modules)
    check_module_folders_listed(path, modules)
    backbone, tokenizer, config = load_backbone(transformer_folder(path, modules), options)
    settings = transformer_settings(path, modules)
    if settings.get("do_lower_case"):
        apply_lowercase(tokenizer)
    return TokenModel(
        family=family,
        path=path,
        architecture=(getattr(config, "architectures", None) or [type(backbone).__name__])[0],
        tokenizer=tokenizer,
        backbone=backbone,
        projection=load_dense_stack(path, modules, options.trust_remote_code, multi_vector=colbert is not None),
        colbert=colbert,
        max_length=model_max_length(tokenizer, config, settings.get("max_seq_length")),
        hidden_size=hidden_size_of(config),
        position_limit=position_limit(config),
    )


def refuse_adapter_inside_pipeline(adapter: Path) -> None:
    """An adapter saved inside a sentence-transformers / PyLate folder (``modules.json`` beside it, a trained
    ``1_Dense``, ColBERT settings) is one part of a pipeline tokembed's adapter loading does not read: applying it
    to the base alone would drop the folder's projection and settings without a word."""
    from tokembed.models.st_colbert import has_colbert_settings  # st_colbert imports this module

    extra = [module.get("path") or module.get("type", "?") for module in read_modules(adapter)
             if _type_name(module) not in ("Transformer", "Pooling", "Normalize")]
    if extra or has_colbert_settings(adapter):
        what = f"modules {', '.join(map(str, extra))}" if extra else "ColBERT settings in config_sentence_transformers.json"
        raise ModelError(
            f"{adapter}: a PEFT adapter saved inside a sentence-transformers / PyLate pipeline (modules.json: {what}); "
            "tokembed applies an adapter to its base checkpoint only and would leave these unread",
            hint="merge the adapter (peft's merge_and_unload) and save the whole model, then encode that folder",
        )
