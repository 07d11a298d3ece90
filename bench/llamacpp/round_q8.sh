#!/bin/bash
# A reduced ../shared/peers/llamacpp/run_round.sh: Q8_0 models and dsv4 native weights only,
# decode at C = 4096 and 8192, back to back. usage: LLAMACPP_DIR=… DSV4=… [NUMERICS=deployment] round_q8.sh TAG
cd "${LLAMACPP_DIR:?set LLAMACPP_DIR to the work folder holding src/build, models/ and logs/ (../shared/peers/llamacpp/README.md)}"
TAG=$1; R=logs/$TAG; mkdir -p $R
B=src/build/bin/llama-bench
D=${DSV4:?set DSV4 to the dsv4 executable}
llama() { # model ctx
  local o=$R/llama_$1_d$2
  /usr/bin/time -v $B -m models/$1_q8_0.gguf -t 2 -p 0 -n 16 -d $2 -r 3 -fa 1 -mmp 0 -o json > $o.json 2> $o.err
  echo "$(date +%T) llama $1 d$2 rc=$?"
}
dsv4() { # type ctx
  local o=$R/dsv4_$1_c$2_native
  /usr/bin/time -v $D bench --preset v4-flash --layer-type $1 --context $2 --decode 16 --threads 2 --repeats 3 --weights native --numerics ${NUMERICS:-reference} --json > $o.out 2> $o.err
  echo "$(date +%T) dsv4 $1 c$2 rc=$?"
}
echo "$(date +%T) start $TAG; $(uptime)"
llama base 4096; llama base 8192
for T in csa swa hca; do
  case $T in csa) M=csa3;; swa) M=swa2;; hca) M=hca2;; esac
  dsv4 $T 4096; llama $M 4096
  dsv4 $T 8192; llama $M 8192
done
echo "$(date +%T) end $TAG; $(uptime)"
