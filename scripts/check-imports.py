#!/usr/bin/env python3
"""Fails when two files of src/ import each other, directly or round a loop.

Reads every `crate::…` and `super::…` path outside `#[cfg(test)] mod tests`,
maps it to the file that defines the module, and looks for strongly
connected components (Tarjan). ARCHITECTURE.md lists the layers this keeps.
"""
import re,os,sys,itertools
root=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
files={}
for dp,_,fs in os.walk(root):
    for f in fs:
        if f.endswith('.rs'):
            full=os.path.join(dp,f)
            files['src/'+os.path.relpath(full, root)]=open(full).read()
def modpath(p):
    p=p[len('src/'):-3]
    parts=p.split('/')
    if parts[-1] in ('mod','lib'): parts=parts[:-1]
    return tuple(parts)
mods={modpath(p):p for p in files}
def resolve(path):
    # longest prefix that is a module file
    for k in range(len(path),0,-1):
        if tuple(path[:k]) in mods: return tuple(path[:k])
    return None
edges={}
for p,s in files.items():
    me=modpath(p)
    s=re.sub(r'#\[cfg\(test\)\]\s*mod tests \{.*', '', s, flags=re.S)
    deps=set()
    for m in re.finditer(r'crate::([a-z_]+(?:::[a-z_]+)*)', s):
        r=resolve(m.group(1).split('::'))
        if r and r!=me: deps.add(r)
    for m in re.finditer(r'\buse super::([a-z_]+(?:::[a-z_]+)*)?', s):
        base=me[:-1] if not p.endswith('mod.rs') else me[:-1]
        path=list(base)+(m.group(1).split('::') if m.group(1) else [])
        r=resolve(path) if path else None
        if r and r!=me: deps.add(r)
    edges[me]=deps
# find cycles via Tarjan
index={};low={};st=[];on=set();res=[];i=[0]
def sc(v):
    index[v]=low[v]=i[0];i[0]+=1;st.append(v);on.add(v)
    for w in edges.get(v,()):
        if w not in index: sc(w);low[v]=min(low[v],low[w])
        elif w in on: low[v]=min(low[v],index[w])
    if low[v]==index[v]:
        comp=[]
        while True:
            w=st.pop();on.discard(w);comp.append(w)
            if w==v:break
        if len(comp)>1: res.append(comp)
sys.setrecursionlimit(10000)
for v in edges:
    if v not in index: sc(v)
for c in res: print("CYCLE:", ["/".join(x) for x in c])
print("imports: %d modules, %d cycles" % (len(edges), len(res)))
sys.exit(1 if res else 0)
