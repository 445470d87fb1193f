/* Attention-kernel microbenchmark (issue 16): one decode query (Gemma 3 270M shape: 1 KV head, 4 query heads,
 * head_dim 256, block_size 16) over T positions in a shuffled block table, int4_pertoken (KV_DT_Q4) vs
 * int8_pertoken (KV_DT_I8_TOKEN) through kv_attend, and the previous AVX-512 int4 kernel
 * (kv_attend_group_q4_reference, kv_attention_q4_ref.c), one thread, data in cache; prints the best of `reps` calls
 * and whether the int4 outputs of the current and the previous kernel are bit-identical. Not part of the suite:
 *   K=Sources/CKernels; clang -O3 -mavx2 -mfma -mf16c -fno-math-errno -I$K/include -I$K \
 *     scripts/bench/kv_attention_microbench.c $K/kv_attention.c $K/kv_attention512.c $K/kv_attention_q4.c \
 *     $K/kv_attention_q4_ref.c $K/kv_q4.c $K/kv_store.c -o /tmp/kv_mb -lm && /tmp/kv_mb 8192 200
 *   # [T] [reps] [mode: 0 all, 4 int4 only, 8 int8 only]
 * Swap kv_attention_q4.c for a candidate kernel to compare (interleave runs: this machine is shared). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <math.h>
#include "kv_kernels.h"
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
static float frand(unsigned *s){*s=*s*1664525u+1013904223u;return ((*s>>8)/16777216.0f)*2-1;}
int main(int argc,char**argv){
  const int D=256,H=1,B=16,NH=4,T=argc>1?atoi(argv[1]):8192, reps=argc>2?atoi(argv[2]):50;
  const int nb=T/B; unsigned s=1;
  int32_t *ids=malloc(nb*4); for(int i=0;i<nb;i++) ids[i]=i; for(int i=nb-1;i>0;i--){int j=(int)((s=s*1664525u+1013904223u)>>8)%(i+1);int t=ids[i];ids[i]=ids[j];ids[j]=t;}
  // q4 layout
  int kr=kv_q4k_row_bytes(D), vr=kv_q4v_row_bytes(D);
  size_t voff=(size_t)H*B*kr, stride4=((voff+(size_t)H*B*vr)+63)&~63;
  uint8_t *m4=aligned_alloc(64,stride4*nb);
  // i8 layout
  size_t voff8=(size_t)H*B*D, ks=2*voff8, vs=ks+H*B*4, stride8=(vs+H*B*4+63)&~63;
  uint8_t *m8=aligned_alloc(64,stride8*nb);
  float row[256];
  for(int b=0;b<nb;b++) for(int o=0;o<B;o++){
     for(int d=0;d<D;d++) row[d]=frand(&s)*(1+(o%3));
     kv_store_row_q4k(row,m4+b*stride4+o*kr,D);
     float a=0; for(int d=0;d<D;d++) a=fmaxf(a,fabsf(row[d])); a/=127;
     kv_store_row(KV_DT_I8_TOKEN,row,m8+b*stride8+o*D,D,a); ((float*)(m8+b*stride8+ks))[o]=a;
     for(int d=0;d<D;d++) row[d]=frand(&s);
     kv_store_row_q4v(row,m4+b*stride4+voff+o*vr,D);
     a=0; for(int d=0;d<D;d++) a=fmaxf(a,fabsf(row[d])); a/=127;
     kv_store_row(KV_DT_I8_TOKEN,row,m8+b*stride8+voff8+o*D,D,a); ((float*)(m8+b*stride8+vs))[o]=a;
  }
  float q[NH*256], out4[NH*256], out8[NH*256];
  for(int i=0;i<NH*D;i++) q[i]=frand(&s)*3;
  kv_layer_view v4={m4,stride4,voff,0,0,NULL,NULL,ids,KV_DT_Q4,H,D,B,1,0};
  kv_layer_view v8={m8,stride8,voff8,ks,vs,NULL,NULL,ids,KV_DT_I8_TOKEN,H,D,B,1,0};
  int mode=argc>3?atoi(argv[3]):0; double best4=1e9,best8=1e9,bestr=1e9;
  float outr[NH*256]; const float *qp[4]={q,q+D,q+2*D,q+3*D};
  for(int r=0;r<reps;r++){
    double t0=now(); if(mode!=8) kv_attend(&v4,0,T-1,q,NH,0.0625f,out4); double t1=now(); if(t1-t0<best4)best4=t1-t0;
    t0=now(); if(mode!=4) kv_attend(&v8,0,T-1,q,NH,0.0625f,out8); t1=now(); if(t1-t0<best8)best8=t1-t0;
    t0=now(); if(mode==0) kv_attend_group_q4_reference(&v4,0,NH,0,T-1,qp,0.0625f,outr,NULL); t1=now(); if(t1-t0<bestr)bestr=t1-t0;
  }
  double cs=0; for(int i=0;i<NH*D;i++) cs+=out4[i]*(i+1);
  printf("T=%d q4 %.3f ms (%.1f ns/pos)  i8 %.3f ms (%.1f ns/pos)  ratio q4/i8 %.3f  checksum q4 %.9g out4[0..2] %.9g %.9g %.9g\n",T,best4*1e3,best4*1e9/T,best8*1e3,best8*1e9/T,best4/best8,cs,out4[0],out4[1],out4[2]);
  if(mode==0) printf("  previous q4 kernel %.3f ms (%.1f ns/pos), current/previous %.3f, outputs bit-identical: %s\n",bestr*1e3,bestr*1e9/T,best4/bestr,memcmp(out4,outr,sizeof(out4))==0?"yes":"NO");
  return 0;
}
