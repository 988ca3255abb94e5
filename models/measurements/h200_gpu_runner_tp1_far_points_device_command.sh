python3 benchmarks/multi_gpu_study.py --out $OUT/a --passes 1 --budget-s 200 --tp 1 --shape qwen3_32b --isl 16384 --points 256:1024 16:16384 1:32768
python3 benchmarks/multi_gpu_study.py --out $OUT/b --passes 1 --budget-s 330 --tp 1 --shape llama31_8b qwen3_8b qwen3_1_7b qwen3_0_6b qwen3_30b_a3b --isl 16384 32768 --points 256:1024 16:16384 1:32768
