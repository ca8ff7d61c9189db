"""The catalogue: categories, garments and their image files, uploads and bulk imports.

One validation path for uploads (:mod:`.uploads`), media files (:mod:`.media`), edits
(:mod:`.garments`), imports (:mod:`.imports`) and the import format reader (:mod:`.source`).
"""

from retrieval.catalogue.duplicates import (
    DuplicateImage,
    ExactDuplicate,
    FingerprintReport,
    exact_duplicate,
    fingerprint_stored_photos,
    mark_different_products,
    merge_same_product,
    open_flags,
)
from retrieval.catalogue.examples import (
    ExampleImportReport,
    example_role,
    import_example_photos,
    save_example_photo,
)
from retrieval.catalogue.garments import (
    CategoryNameTaken,
    create_category,
    get_or_create_category,
    merge_categories,
    move_garments,
    save_garment,
)
from retrieval.catalogue.imports import (
    import_catalog,
    import_progress,
    requeue_unqueued_imports,
    rescue_stalled_imports,
    resume_import,
    save_import_job,
    start_import,
)
from retrieval.catalogue.media import (
    STORAGE_UNAVAILABLE,
    MediaPruneResult,
    MediaStorageError,
    delete_images_after_commit,
    delete_stored_image,
    delete_unreferenced_images,
    prune_media,
    store_image,
)
from retrieval.catalogue.source import CatalogError, CatalogRow, CatalogSource, Problem, read_rows
from retrieval.catalogue.uploads import (
    decode_query_upload,
    decode_upload,
    image_digest,
    is_too_large,
    read_upload,
    validate_upload,
)

__all__ = [
    "STORAGE_UNAVAILABLE",
    "CatalogError",
    "CatalogRow",
    "CatalogSource",
    "CategoryNameTaken",
    "DuplicateImage",
    "ExactDuplicate",
    "ExampleImportReport",
    "FingerprintReport",
    "MediaPruneResult",
    "MediaStorageError",
    "Problem",
    "create_category",
    "decode_query_upload",
    "decode_upload",
    "delete_images_after_commit",
    "delete_stored_image",
    "delete_unreferenced_images",
    "exact_duplicate",
    "example_role",
    "fingerprint_stored_photos",
    "get_or_create_category",
    "image_digest",
    "import_catalog",
    "import_example_photos",
    "import_progress",
    "is_too_large",
    "mark_different_products",
    "merge_categories",
    "merge_same_product",
    "move_garments",
    "open_flags",
    "prune_media",
    "read_rows",
    "read_upload",
    "requeue_unqueued_imports",
    "rescue_stalled_imports",
    "resume_import",
    "save_example_photo",
    "save_garment",
    "save_import_job",
    "start_import",
    "store_image",
    "validate_upload",
]
