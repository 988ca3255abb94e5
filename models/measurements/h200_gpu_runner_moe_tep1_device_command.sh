python3 benchmarks/multi_gpu_study.py --out $OUT --passes 2 --budget-s 300 --tp 1 --shape qwen3_30b_a3b
