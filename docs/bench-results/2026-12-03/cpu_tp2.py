import time, torch, sys
from transformers import AutoModelForCausalLM
torch.manual_seed(0)
path="/root/.cache/guardrsft/models/smollm2-135m-instruct"
m = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
a=torch.randn(1024,1024); t=time.time()
for _ in range(20): a@a
print("matmul GFLOP/s", round(20*2*1024**3/(time.time()-t)/1e9,1), flush=True)
from peft import LoraConfig, get_peft_model
m = get_peft_model(m, LoraConfig(r=16, lora_alpha=16, target_modules=["q_proj","k_proj","v_proj","o_proj","gate_proj","up_proj","down_proj"]))
params=[p for p in m.parameters() if p.requires_grad]
opt=torch.optim.AdamW(params, lr=1e-4)
B,T=4,140
x=torch.randint(0,49000,(B,T)); lab=x.clone(); lab[:, :80]=-100
for i in range(3):
    t=time.time(); out=m(input_ids=x, labels=lab); out.loss.backward(); opt.step(); opt.zero_grad()
    print("lora train", B, T, f"{B*T/(time.time()-t):.0f} tok/s", flush=True)
m.eval()
for B in (38,):
    x=torch.randint(100,49000,(B,90))
    t=time.time()
    with torch.no_grad(): out=m.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=32, min_new_tokens=32, do_sample=False)
    dt=time.time()-t; print("gen", B, f"{B*32/dt:.1f} new tok/s, {dt/32*1000:.0f} ms/step", flush=True)
