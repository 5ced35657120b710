// km1s agents on a lab (docs/lab.md): a cluster of real agents in network namespaces, driven through the
// CLI and the control API client exactly as a user would. Shared by the lab tests and the benchmarks.
import { execFile } from 'node:child_process'
import { existsSync } from 'node:fs'
import { rm, writeFile } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import { promisify } from 'node:util'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { ApiClient, type NodeView } from '../../src/api/index.ts'
import { createLogger } from '../../src/common/logger.ts'
import { dataPaths } from '../../src/common/paths.ts'
import { loadOrCreateIdentity } from '../../src/mesh/identity.ts'
import { detectOciRuntime } from '../../src/runtime/detect.ts'
import { instanceId, RuntimeNames } from '../../src/runtime/names.ts'
import { ContainerRuntime } from '../../src/runtime/runtime.ts'
import { createLab, type Lab, type LabNode, waitFor } from './lab.ts'

const execFileAsync = promisify(execFile)

export const ROOT = resolve(import.meta.dirname, '../..')
// KM1S_LAB_BIN: another build's bin/km1s, to measure two builds side by side.
export const KM1S = process.env.KM1S_LAB_BIN ?? join(ROOT, 'bin', 'km1s')
export const MESH_PORT = 4100

export function listenAddr(node: LabNode): string {
  return `/ip4/${node.address}/tcp/${MESH_PORT}`
}

export function client(node: LabNode): ApiClient {
  return new ApiClient(node.socket, { timeoutMs: 5_000 })
}

/** Runs the km1s CLI against a node's data directory and socket, as a user on that node would. */
export async function km1s(
  node: LabNode,
  args: string[],
): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await execFileAsync(KM1S, ['--data-dir', node.dataDir, ...args], {
      timeout: 30_000,
      maxBuffer: 16 << 20,
    })
    return { code: 0, stdout, stderr }
  } catch (err) {
    const e = err as { code?: number | string; stdout?: string; stderr?: string }
    return { code: typeof e.code === 'number' ? e.code : 1, stdout: e.stdout ?? '', stderr: e.stderr ?? '' }
  }
}

export async function km1sOk(node: LabNode, args: string[]): Promise<string> {
  const r = await km1s(node, args)
  if (r.code !== 0) throw new Error(`km1s ${args.join(' ')} failed (${r.code}): ${r.stderr.trim()}`)
  return r.stdout
}

export interface AgentOptions {
  extraArgs?: string[]
  /** Lab agents run no container runtime unless a test asks: the mesh tests need none. */
  runtime?: 'oci' | 'process' | 'none'
  env?: Record<string, string>
}

/**
 * What an agent's runtime made outside the lab's namespaces — containers' namespaces, pause processes,
 * shims, cgroups — outlives the agent by design, so the lab's own cleanup would miss it when a test fails
 * or is interrupted before removing its containers. At teardown the node's runtime is started once more
 * with no wanted container: its start-up sweep removes everything of the node's instance (as the runtime
 * tests' harness does).
 */
async function sweepRuntime(node: LabNode, kind: 'oci' | 'process'): Promise<void> {
  const identity = dataPaths(node.dataDir).identity
  if (!existsSync(identity)) return
  const peer = peerIdFromPrivateKey(await loadOrCreateIdentity(identity)).toString()
  const names = new RuntimeNames({
    instance: instanceId(peer),
    runRoot: join(node.dataDir, '..', `${node.name}-run`),
    dataDir: node.dataDir,
    logRoot: join(node.dataDir, '..', `${node.name}-logs`),
  })
  await rm(names.specDir, { recursive: true, force: true })
  const oci = kind === 'oci' ? await detectOciRuntime() : undefined
  const log = createLogger({ level: 'silent' })
  const sweeper = new ContainerRuntime({ kind, names, log, oci, hostNetns: node.netns })
  await sweeper.start()
  await sweeper.stop()
}

/** Starts a node's agent in its namespace and resolves when its API answers. */
export async function startAgent(node: LabNode, opts: AgentOptions = {}): Promise<void> {
  const kind = opts.runtime ?? 'none'
  if (kind !== 'none') node.atTeardown('runtime', () => sweepRuntime(node, kind))
  await node.start(
    [
      KM1S,
      '--data-dir',
      node.dataDir,
      'agent',
      '--name',
      node.name,
      '--listen',
      listenAddr(node),
      '--runtime',
      opts.runtime ?? 'none',
      // Inside the node's directory, never the host's /run/km1s: the lab removes it with the node.
      '--run-dir',
      join(node.dataDir, '..', `${node.name}-run`),
      '--log-dir',
      join(node.dataDir, '..', `${node.name}-logs`),
      // The host's resolvers lie outside the lab: names beyond km1s.internal go nowhere unless a test says.
      ...(opts.extraArgs?.includes('--dns-upstream') ? [] : ['--dns-upstream', 'none']),
      ...(opts.extraArgs ?? []),
    ],
    opts.env,
  )
  await waitForApi(node)
}

export async function waitForApi(node: LabNode, timeoutMs = 15_000): Promise<void> {
  await waitFor(
    `the API of ${node.name}`,
    async () => {
      if (node.pid() === undefined)
        throw new Error(`the agent of ${node.name} exited:\n${node.log().slice(-2000)}`)
      return (await client(node).health()).ok
    },
    { timeoutMs, intervalMs: 50 },
  )
}

/** Initialises a cluster on the first node and joins the others (the last one through a token file). */
export async function setupCluster(nodes: LabNode[]): Promise<string> {
  const [first, ...rest] = nodes
  if (!first) throw new Error('no nodes')
  const token = (await km1sOk(first, ['init', '--name', first.name])).trim().split('\n').at(-1) ?? ''
  await Promise.all(
    rest.map(async (n, i) => {
      if (i === rest.length - 1 && rest.length > 1) {
        // "Plug a Pi in and it joins": the agent consumes a token file at first start.
        await writeFile(tokenFile(n), `${token}\n`)
      } else await km1sOk(n, ['join', token, '--name', n.name])
    }),
  )
  return token
}

export function tokenFile(node: LabNode): string {
  return join(node.dataDir, '..', `${node.name}-boot-token`)
}

export function agentArgs(node: LabNode): string[] {
  return ['--token-file', tokenFile(node)]
}

export async function aliveNames(node: LabNode): Promise<string[]> {
  const nodes: NodeView[] = await client(node).nodes()
  return nodes
    .filter((n) => n.state === 'alive')
    .map((n) => n.name)
    .sort()
}

/** Waits until every node lists exactly `expected` as alive. */
export async function waitForAlive(nodes: LabNode[], expected: LabNode[], timeoutMs = 20_000): Promise<void> {
  const want = expected.map((n) => n.name).sort()
  await Promise.all(
    nodes.map((node) =>
      waitFor(
        `${node.name} to list ${want.join(',')} as alive`,
        async () => {
          const got = await aliveNames(node)
          if (got.join(',') === want.join(',')) return true
          // Enough to tell a missing node record from a missing heartbeat or connection when CI fails.
          const view = (await client(node).nodes())
            .map((v) => `${v.name}:${v.state}:${v.lastHeard}`)
            .join(' ')
          const s = await client(node).status()
          throw new Error(
            `${node.name} lists ${got.join(',')} as alive (view ${view}; ${s.mesh.connectedPeers} peers, ${s.state.records} records, sync ${s.state.syncSessions} ok/${s.state.syncFailures} failed)`,
          )
        },
        { timeoutMs, intervalMs: 100 },
      ),
    ),
  )
}

export interface Cluster {
  lab: Lab
  nodes: LabNode[]
  token: string
}

/** A lab of N nodes, each running an agent of one cluster. */
export async function startCluster(
  n: number,
  opts: { name?: string; agent?: AgentOptions } = {},
): Promise<Cluster> {
  const lab = await createLab({ nodes: n, name: opts.name })
  try {
    const token = await setupCluster(lab.nodes)
    await Promise.all(
      lab.nodes.map((node) =>
        startAgent(node, {
          ...opts.agent,
          extraArgs: [...agentArgs(node), ...(opts.agent?.extraArgs ?? [])],
        }),
      ),
    )
    return { lab, nodes: lab.nodes, token }
  } catch (err) {
    await lab.down()
    throw err
  }
}
