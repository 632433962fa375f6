"""Federation's client side: the native worker, its uploader and the compact-download patcher."""
