// Placement: a pure, deterministic function of (workloads, live nodes). Every node computes it over its own
// view and runs only what lands on itself; equal views give equal answers, so no leader is needed.
// Hand-written because it is the heart of km1s: rendezvous (highest random weight) hashing per replica.
import { createHash } from 'node:crypto'

export interface PlacementNode {
  /** Peer id: the identity rendezvous hashing ranks. */
  id: string
  name: string
  /** The node's architecture after the `km1s.io/arch` label override. */
  arch: string
  cpus: number
  /** Bytes. */
  memory: number
  labels: Readonly<Record<string, string>>
}

export interface PlacementWorkload {
  name: string
  replicas: number
  /** Millicores requested per replica (0 = none). */
  cpu: number
  /** Bytes requested per replica. */
  memory: number
  /** Arches it can run on (the workload's --arch, or its artifact's); null = any. */
  arches: readonly string[] | null
  /** Labels a node must carry. */
  labels: Readonly<Record<string, string>>
  exclusive: boolean
}

export interface PlacementInput {
  workloads: readonly PlacementWorkload[]
  /** The live nodes of this view. */
  nodes: readonly PlacementNode[]
  /** Every node this node knows of (alive or not): `exclusive` needs more than half of them live. */
  knownNodes: number
}

export interface Unplaced {
  workload: string
  index: number
  reason: string
}

export interface Placement {
  /** Container name (`<workload>-<index>`) → peer id of the node that runs it. */
  assignments: Map<string, string>
  unplaced: Unplaced[]
}

/** The rendezvous weight of (workload, replica, node): 48 bits of sha256, equal on every node. */
export function weight(workload: string, index: number, node: string): number {
  return createHash('sha256').update(`${workload}\0${index}\0${node}`).digest().readUIntBE(0, 6)
}

const byString = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0)

function matches(node: PlacementNode, w: PlacementWorkload): boolean {
  if (w.arches !== null && !w.arches.includes(node.arch)) return false
  for (const [k, v] of Object.entries(w.labels)) if (node.labels[k] !== v) return false
  return true
}

/**
 * Workload by workload (by name), in layers: in each layer every matching node with room for one more
 * replica takes at most one, paired by a stable matching (deferred acceptance): each replica ranks nodes
 * by rendezvous weight, a node keeps the replica that weighs most on it. Spread follows (no node gets a
 * second replica of a workload before every node with room has one), the result does not depend on the
 * order replicas are looked at, and a node joining or leaving moves the replicas it wins or loses plus
 * short displacement chains (measured in the tests).
 */
export function place(input: PlacementInput): Placement {
  const nodes = [...input.nodes].sort((a, b) => byString(a.id, b.id))
  const workloads = [...input.workloads].sort((a, b) => byString(a.name, b.name))
  const freeCpu = new Map(nodes.map((n) => [n.id, n.cpus * 1000]))
  const freeMemory = new Map(nodes.map((n) => [n.id, n.memory]))
  const assignments = new Map<string, string>()
  const unplaced: Unplaced[] = []
  const majority = nodes.length * 2 > input.knownNodes
  const slots = (id: string, w: PlacementWorkload): number =>
    Math.min(
      w.cpu > 0 ? Math.floor((freeCpu.get(id) ?? 0) / w.cpu) : Number.MAX_SAFE_INTEGER,
      w.memory > 0 ? Math.floor((freeMemory.get(id) ?? 0) / w.memory) : Number.MAX_SAFE_INTEGER,
    )
  for (const w of workloads) {
    if (w.replicas === 0) continue
    if (w.exclusive && !majority) {
      for (let index = 0; index < w.replicas; index++)
        unplaced.push({
          workload: w.name,
          index,
          reason: 'exclusive: this side of the network sees no majority',
        })
      continue
    }
    const eligible = nodes.filter((n) => matches(n, w))
    if (eligible.length === 0) {
      const why =
        nodes.length === 0
          ? 'no live node'
          : `no live node matches${w.arches ? ` arch ${w.arches.join('|')}` : ''}${
              Object.keys(w.labels).length
                ? ` labels ${Object.entries(w.labels)
                    .map(([k, v]) => `${k}=${v}`)
                    .join(',')}`
                : ''
            }`
      for (let index = 0; index < w.replicas; index++) unplaced.push({ workload: w.name, index, reason: why })
      continue
    }
    const weights = Array.from({ length: w.replicas }, (_, i) => eligible.map((n) => weight(w.name, i, n.id)))
    const prefs = weights.map((ws) =>
      eligible.map((_, j) => j).sort((a, b) => (ws[b] as number) - (ws[a] as number)),
    )
    // Layers of one replica per node: spread holds (no node gets a second before each has one), and a
    // node leaving only starts a short chain in its layer instead of reshuffling everything.
    let remaining = Array.from({ length: w.replicas }, (_, i) => i)
    while (remaining.length > 0) {
      const open = eligible.map((n) => slots(n.id, w) > 0)
      const holder = new Array<number>(eligible.length).fill(-1)
      const next = new Map(remaining.map((i) => [i, 0]))
      const free = [...remaining].reverse()
      while (free.length > 0) {
        const i = free.pop() as number
        const order = prefs[i] as number[]
        let n = next.get(i) as number
        while (n < order.length) {
          const j = order[n++] as number
          if (!open[j]) continue
          const h = holder[j] as number
          if (h === -1) {
            holder[j] = i
            break
          }
          // Taken: the node keeps the replica that weighs more on it.
          if ((weights[h]?.[j] as number) < (weights[i]?.[j] as number)) {
            holder[j] = i
            free.push(h)
            break
          }
        }
        next.set(i, n)
      }
      const placed = new Set<number>()
      holder.forEach((i, j) => {
        if (i === -1) return
        const id = (eligible[j] as PlacementNode).id
        freeCpu.set(id, (freeCpu.get(id) ?? 0) - w.cpu)
        freeMemory.set(id, (freeMemory.get(id) ?? 0) - w.memory)
        assignments.set(`${w.name}-${i}`, id)
        placed.add(i)
      })
      if (placed.size === 0) break
      remaining = remaining.filter((i) => !placed.has(i))
    }
    for (const index of remaining)
      unplaced.push({ workload: w.name, index, reason: 'no matching node has enough free CPU and memory' })
  }
  const sorted = new Map([...assignments].sort((a, b) => byString(a[0], b[0])))
  return {
    assignments: sorted,
    unplaced: unplaced.sort((a, b) => byString(a.workload, b.workload) || a.index - b.index),
  }
}
