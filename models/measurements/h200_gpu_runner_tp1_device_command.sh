python3 benchmarks/multi_gpu_study.py --out $OUT --passes 2 --budget-s 480
