"""The LoRA library: folders of LoRA files with A1111 sidecars, header-only listing, hashes, disk cache."""
from lora_ui.library.library import CACHE_FILE_NAME, LORA_SUFFIXES, LibraryError, LoraEntry, LoraLibrary, RefreshReport
from lora_ui.library.sidecars import SD_VERSIONS, USER_META_KEYS

__all__ = ["LoraLibrary", "LoraEntry", "RefreshReport", "LibraryError", "LORA_SUFFIXES", "CACHE_FILE_NAME",
           "SD_VERSIONS", "USER_META_KEYS"]
