# call S (eleventh run): sampled decoding through captured CUDA graphs vs eager, same draws expected; zero-shot base
source .gpu/d/q11/env.sh
timeout 560 python bench/eval_throughput.py --model $M --contents .gpu/d/contents.jsonl --items 64 --big-items 256 \
    --naive-batch 256 --batch 2048 --max-new-tokens 256 --sample 4 --sample-eager --out $OUT/eval_sampling.json > $OUT/sample.log 2>&1
grep -v -i warn $OUT/sample.log | tail -n 12
