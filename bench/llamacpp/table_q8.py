#!/usr/bin/env python3
"""Per-layer decode ms per round of round_q8.sh: llama.cpp Q8_0 as (model - base) / 2 against dsv4 bench
(FP8 native), median step, and their ratio. usage: LLAMACPP_DIR=… table_q8.py ROUND..."""
import json, os, sys
L = os.path.join(os.environ.get('LLAMACPP_DIR', '.'), 'logs')
M = {'csa': 'csa3', 'swa': 'swa2', 'hca': 'hca2'}
for R in sys.argv[1:]:
    print(f'## {R}')
    print('| type | C | llama.cpp Q8_0 ms (model - base)/2 | dsv4 FP8 ms (fastest) | llama / dsv4 |')
    print('|---|---|---|---|---|')
    for T, m in M.items():
        for C in (4096, 8192):
            def ms(name):
                r = json.load(open(f'{L}/{R}/llama_{name}_d{C}.json'))[0]
                return r['avg_ns'] / r['n_gen'] / 1e6, [round(s / r['n_gen'] / 1e6, 2) for s in r['samples_ns']]
            (mm, ms_s), (bm, bs) = ms(m), ms('base')
            per = (mm - bm) / 2
            d = json.loads(open(f'{L}/{R}/dsv4_{T}_c{C}_native.out').read().strip().splitlines()[-1])
            print(f"| {T} | {C} | {per:.2f} ({m} {mm:.2f} {ms_s}, base {bm:.2f} {bs}) | {d['seconds']*1e3:.2f} ({d['fastest_step_seconds']*1e3:.2f}) | {per / (d['seconds']*1e3):.2f} |")
