# Sourced by get-llama.sh and get-llama-cpp-python.sh: the ISA flags both llama.cpp builds
# use, and an identity of this CPU for their build stamps.
#   llama_isa_cflags compiler flags (a string; empty when AMX is wanted)
#   llama_isa_flags  the same as cmake -D arguments (an array)
#   llama_cpu_id     vendor, family/model and a hash of /proc/cpuinfo's flags
#   llama_amx        1 when the AMX backend is built (HUGELOAD_LLAMA_AMX=1 on an AMX CPU)
# Why AMX is off by default: get-llama.sh's comment at the flags.
_flags_line=$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || true)
llama_cpu_id="$(grep -m1 '^vendor_id' /proc/cpuinfo 2>/dev/null | awk '{print $3}')"
llama_cpu_id+="-$(grep -m1 '^cpu family' /proc/cpuinfo 2>/dev/null | awk '{print $4}')"
llama_cpu_id+="-$(grep -m1 '^model[[:space:]]*:' /proc/cpuinfo 2>/dev/null | awk '{print $3}')"
llama_cpu_id+="-$(printf '%s' "$_flags_line" | sha256sum | cut -c1-12)"
llama_amx=0
llama_isa_flags=()
llama_isa_cflags=
case " $_flags_line " in
    *" amx_tile "*|*" amx_int8 "*|*" amx_bf16 "*) _has_amx=1 ;;
    *) _has_amx=0 ;;
esac
if [[ ${HUGELOAD_LLAMA_AMX:-0} == 1 && $_has_amx == 1 ]]; then
    llama_amx=1
else
    # Harmless where the CPU has no AMX; needed where it has.
    llama_isa_cflags="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
    llama_isa_flags=("-DCMAKE_C_FLAGS=$llama_isa_cflags" "-DCMAKE_CXX_FLAGS=$llama_isa_cflags")
fi
case " $_flags_line " in
    *" avx2 "*) llama_has_avx2=1 ;;
    *) llama_has_avx2=0 ;;
esac
unset _flags_line _has_amx
