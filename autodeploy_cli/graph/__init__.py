"""FX graph helpers shared by the runner and transforms: cleanup and shapes (core), the matcher toolkit (match),
attention masks, adding graph inputs (inputs), decode CUDA graphs (cudagraph)."""
