"""OpenMMLab adapters. Imported only by configs (custom_imports) or explicitly; the core never imports this."""
