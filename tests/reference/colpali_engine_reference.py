"""Run colpali-engine 0.3.18 itself on a checkpoint (in the separate venv test_colpali_engine_parity.py builds).

    python colpali_engine_reference.py ARCH MODEL PROCESSOR_FOLDER IMAGE QUERY OUT.npz

MODEL is a base folder or a PEFT adapter folder (colpali-engine's ``from_pretrained`` loads its base through
transformers' PEFT integration, unmerged). Writes the document and query embeddings and input ids, and
tokembed's vectors for the same files computed in this venv (same transformers as colpali-engine).
"""

import sys

import numpy as np
import torch
from PIL import Image


def main() -> None:
    arch, model_path, processor_path, image_path, query, out = sys.argv[1:7]
    import colpali_engine.models as models

    model_class = getattr(models, arch)
    processor_class = getattr(models, {"ColQwen2_5": "ColQwen2_5_Processor"}.get(arch, arch + "Processor"))
    model = model_class.from_pretrained(model_path, torch_dtype=torch.float32).eval()
    if arch.startswith("ColQwen2"):
        processor = _without_video(processor_class, processor_path)
    else:
        processor = processor_class.from_pretrained(processor_path)
    docs = processor.process_images([Image.open(image_path)])
    queries = processor.process_queries([query])
    with torch.no_grad():
        doc_embeddings = model(**{k: v for k, v in docs.items() if k != "labels"})
        query_embeddings = model(**queries)
    tokembed_doc, tokembed_query = _tokembed(model_path, Image.open(image_path), query)
    np.savez(out, doc=doc_embeddings[0].numpy(), doc_ids=docs["input_ids"][0].numpy(),
             query=query_embeddings[0].numpy(), query_ids=queries["input_ids"][0].numpy(),
             tokembed_doc=tokembed_doc, tokembed_query=tokembed_query)


def _tokembed(model_path, image, query):
    """tokembed on the same files under this venv's transformers (tells code from transformers-version drift)."""
    from pathlib import Path

    from tokembed.models.registry import load_model

    loaded = load_model(Path(model_path))
    docs = {k: v for k, v in loaded.processor.process_images([image]).items() if k != "labels"}
    with torch.no_grad():
        return loaded.model(**docs)[0].numpy(), loaded.model(**loaded.processor.process_queries([query]))[0].numpy()


def _without_video(processor_class, path):
    """colpali-engine's Qwen2-VL processor without the video processor, which needs torchvision (absent here);
    its process_images / process_queries are untouched."""
    from transformers import AutoImageProcessor, AutoTokenizer

    check = processor_class.check_argument_for_proper_class

    def lenient(self, name, argument):
        return None if name == "video_processor" and argument is None else check(self, name, argument)

    processor_class.check_argument_for_proper_class = lenient
    return processor_class(image_processor=AutoImageProcessor.from_pretrained(path),
                           tokenizer=AutoTokenizer.from_pretrained(path), video_processor=None)


if __name__ == "__main__":
    main()
