"""`sdv2 models list|download|path`: fetch the StreamDiffusionV2 / Wan2.1 weights from the Hugging Face hub.

Where they land, under the models folder (`engine.models.models_dir()`, or `--dir`), in the layouts `engine.models`
reads (`base_parts`):

    <models>/StreamDiffusionV2/wan_causal_dmd_v2v/model.pt            sdv2-1.3b (default)
    <models>/Wan2.1-T2V-1.3B/{Wan2.1_VAE.pth,models_t5_umt5-xxl-enc-bf16.pth,google/umt5-xxl/}   wan2.1-1.3b-original
        (default: the smallest complete base, bf16 umT5, ~11.9 GB)
    <models>/Wan2.1-T2V-1.3B-Diffusers/{model_index.json,text_encoder,tokenizer,vae}/   wan2.1-1.3b-base (fp32, ~23 GB)

The transfer is `huggingface_hub.snapshot_download`; around it, what the library lacks:
  * catalogue.py    the catalogue of model repos (data), the models folder, sizes for people;
  * remote.py       one listing per repo (`HfApi.model_info(files_metadata=True)`) with every name, size, hash and
                    the commit checked before use; a deadline on every request; every failure as one line;
  * containment.py  a name that could leave the models folder (`..`, absolute, backslash) stops everything before a
                    byte is written or deleted;
  * record.py       every file's sha256 (git blob id for small git files) and the record of what was verified, which
                    makes a repeated download a no-op and `status()` hash-free;
  * plan.py         what to fetch, link (`--link FOLDER`: files the user already has, engine/model_links.py finds them
                    by name, size and kind; the hub's hash decides) or keep, and the bytes it takes;
  * fetch.py        `download()`: the plan, the free-space check and the caller's yes before the first byte, the
                    transfer pinned to the listed commit and allowed only the exact names missing, hashes after it;
  * transfer.py     throttled progress; Ctrl-C, or an exception from the `progress` callback, stops every running file
                    transfer at its next chunk;
  * cli.py          `sdv2 models ...`: every file with its size (the hub's listing) and the total, and a question
                    before the first byte (`--yes` skips it).

Every user-fixable problem (hub unreachable or silent, refused, unknown, unsafe listing, not enough disk space,
corrupted download, unknown item) raises `EngineError` with one line that names the fix.
"""

from sdv2_studio.engine.hub.catalogue import Item, catalogue, default_items, format_size, get_item, item_path
from sdv2_studio.engine.hub.cli import register_cli
from sdv2_studio.engine.hub.fetch import download
from sdv2_studio.engine.hub.record import DOWNLOADED, MISSING, PARTIAL, local_size, status

__all__ = ["DOWNLOADED", "MISSING", "PARTIAL", "Item", "catalogue", "default_items", "download", "format_size",
           "get_item", "item_path", "local_size", "register_cli", "status"]
