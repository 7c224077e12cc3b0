"""The processor of the tiny remote-code retriever: colpali-engine's interface (process_images/process_queries)."""

from transformers import BatchFeature, ProcessorMixin


class TinyColProcessor(ProcessorMixin):
    attributes = ["image_processor", "tokenizer"]

    def __init__(self, image_processor=None, tokenizer=None, image_seq_len=16, **kwargs):
        self.image_seq_len = image_seq_len
        super().__init__(image_processor, tokenizer, **kwargs)

    def process_images(self, images):
        pixel_values = self.image_processor(images, return_tensors="pt")["pixel_values"]
        prompt = "<image>" * self.image_seq_len + "<bos>Describe the page.\n"
        batch = self.tokenizer([prompt] * len(images), return_tensors="pt", padding="longest")
        return BatchFeature({**batch, "pixel_values": pixel_values})

    def process_queries(self, queries):
        texts = [f"<bos>Query: {query}" + "<pad>" * 5 for query in queries]
        return BatchFeature(dict(self.tokenizer(texts, return_tensors="pt", padding="longest")))
