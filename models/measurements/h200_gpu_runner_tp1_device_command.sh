export PYTHONUNBUFFERED=1; nvidia-smi -L; date -u; echo "tree: $(pwd)"; ls benchmarks models
if [ -f benchmarks/multi_gpu_study.py ]; then
 timeout 570 python3 benchmarks/multi_gpu_study.py --out $OUT --passes 2 --budget-s 500 2>&1 | tee $OUT/stdout.log
else
 echo FALLBACK main tree; mkdir -p /tmp/c/l /tmp/c/q
 echo '{"model_type":"llama","hidden_size":4096,"intermediate_size":14336,"num_hidden_layers":32,"num_attention_heads":32,"num_key_value_heads":8,"vocab_size":128256,"max_position_embeddings":131072,"rms_norm_eps":1e-5,"rope_theta":500000.0,"tie_word_embeddings":false,"rope_scaling":{"factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":8192,"rope_type":"llama3"}}' >/tmp/c/l/config.json
 echo '{"model_type":"qwen3","hidden_size":5120,"intermediate_size":25600,"num_hidden_layers":64,"num_attention_heads":64,"num_key_value_heads":8,"head_dim":128,"vocab_size":151936,"max_position_embeddings":40960,"rms_norm_eps":1e-6,"rope_theta":1000000,"tie_word_embeddings":false}' >/tmp/c/q/config.json
 for k in 1 2; do for s in l q; do timeout 280 python3 benchmarks/gpu_study.py measure --model-path /tmp/c/$s --out $OUT/${s}_p$k.jsonl --summary $OUT/${s}_p$k.json --isl 256 512 1024 2048 4096 8192 --points 1:1024 8:1024 64:1024 128:1024 8:4096 32:4096 8:8192 2>&1 | grep -v INFO; done; done
fi
date -u
