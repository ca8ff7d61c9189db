"""HTTP pieces shared by the shop (:mod:`retrieval.web`) and the API (:mod:`retrieval.api`)."""
