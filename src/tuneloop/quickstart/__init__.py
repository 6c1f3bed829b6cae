"""The quickstart: bundled Brightcart support data -> prepare -> LoRA -> evaluate -> report -> export."""
