#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <sys/mman.h>
#include <time.h>
#include <string.h>
static uint64_t rng=88172645463325252ULL;
static uint64_t xr(void){rng^=rng<<13;rng^=rng>>7;rng^=rng<<17;return rng;}
int main(int argc,char**argv){
  size_t mib=atol(argv[1]); int huge=atoi(argv[2]);
  size_t bytes=mib<<20, n=bytes/64;
  size_t al=2<<20;
  char*raw=mmap(0,bytes+al,PROT_READ|PROT_WRITE,MAP_PRIVATE|MAP_ANONYMOUS,-1,0);
  char*p=(char*)(((uintptr_t)raw+al-1)&~(al-1));
  if(huge) madvise(p,bytes,MADV_HUGEPAGE); else madvise(p,bytes,MADV_NOHUGEPAGE);
  size_t*perm=malloc(n*sizeof(size_t));
  for(size_t i=0;i<n;i++)perm[i]=i;
  for(size_t i=n-1;i>0;i--){size_t j=xr()%(i+1);size_t t=perm[i];perm[i]=perm[j];perm[j]=t;}
  for(size_t i=0;i<n;i++){*(void**)(p+perm[i]*64)=p+perm[(i+1)%n]*64;}
  void**q=(void**)(p+perm[0]*64);
  size_t steps=20000000;
  for(size_t i=0;i<n && i<steps;i++)q=*q;
  struct timespec a,b;clock_gettime(CLOCK_MONOTONIC,&a);
  for(size_t i=0;i<steps;i++)q=*q;
  clock_gettime(CLOCK_MONOTONIC,&b);
  double ns=((b.tv_sec-a.tv_sec)*1e9+(b.tv_nsec-a.tv_nsec))/steps;
  FILE*f=fopen("/proc/self/smaps_rollup","r");char line[256];long ah=0;while(fgets(line,256,f)){if(!strncmp(line,"AnonHugePages:",14))ah=atol(line+14);}
  printf("%4zu MiB huge=%d: %.1f ns/load (AnonHuge %ld kB)%s\n",mib,huge,ns,ah,q?"":"!");
  return 0;}
