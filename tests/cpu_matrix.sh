#!/usr/bin/env bash
# Run tests under other CPUs' kernel choices, so that a number pinned on this machine is seen to hold on others.
#
# torch picks its vectorised CPU kernels by ATEN_CPU_CAPABILITY (default = no SIMD, avx2, avx512) and oneDNN its
# convolution kernels by ONEDNN_MAX_CPU_ISA (AVX2 = what an AVX2-only machine runs; unset = the best this CPU has).
# Each combination below is one pytest run; so are OMP_NUM_THREADS=1 and 2 with the native kernels. A capability
# above what this CPU has falls back silently to the best it has (such a row then repeats another).
#
#   tests/cpu_matrix.sh                 # the tests marked `pins_numbers` (a few minutes per combination)
#   tests/cpu_matrix.sh --all           # the whole suite (as CI would see it on each kind of CPU)
#   tests/cpu_matrix.sh -- -k ppl       # extra pytest arguments after --
#
# Logs go to ${MATRIX_LOGS:-/tmp/cpu-matrix}/<combination>.log; the summary is one line per combination, and the
# exit status is non-zero when any combination failed.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
LOGS=${MATRIX_LOGS:-/tmp/cpu-matrix}
select=(-m pins_numbers)
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --all) select=(); shift ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "cpu_matrix.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
mkdir -p "$LOGS"

# name | environment
combos=(
  "aten-default|ATEN_CPU_CAPABILITY=default"
  "aten-default+onednn-avx2|ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=AVX2"
  "aten-avx2|ATEN_CPU_CAPABILITY=avx2"
  "aten-avx2+onednn-avx2|ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2"
  "aten-avx512|ATEN_CPU_CAPABILITY=avx512"
  "aten-avx512+onednn-avx2|ATEN_CPU_CAPABILITY=avx512 ONEDNN_MAX_CPU_ISA=AVX2"
  "native-omp1|OMP_NUM_THREADS=1"
  "native-omp2|OMP_NUM_THREADS=2"
)
if [ -n "${MATRIX_ONLY:-}" ]; then   # e.g. MATRIX_ONLY=aten-default,native-omp2
  kept=()
  for row in "${combos[@]}"; do
    case ",$MATRIX_ONLY," in *",${row%%|*},"*) kept+=("$row") ;; esac
  done
  combos=("${kept[@]}")
fi

status=0
summary=()
for row in "${combos[@]}"; do
  name=${row%%|*}
  envs=${row#*|}
  start=$(date +%s)
  env $envs "$PY" -m pytest -q -p no:cacheprovider "${select[@]}" "${extra[@]}" tests > "$LOGS/$name.log" 2>&1
  rc=$?
  line=$(grep -E '^[0-9]+ (passed|failed)|^=+ .*(passed|failed|error)' "$LOGS/$name.log" | tail -n 1 | tr -d '=')
  summary+=("$(printf '%-26s rc=%-2s %4ss %s' "$name" "$rc" "$(( $(date +%s) - start ))" "$line")")
  echo "${summary[-1]}"
  [ "$rc" = 0 ] || status=1
done
echo
echo "cpu_matrix: ${#combos[@]} combinations, logs in $LOGS"
printf '%s\n' "${summary[@]}"
exit $status
