// The network test lab (docs/lab.md): a `lan` namespace holding a bridge, one namespace per node with a veth
// into it, partitions and packet loss as bridge-family nftables rules, and cleanup of everything it made,
// also when the process is interrupted or killed (a later sweep removes what a killed owner left).
import { type ChildProcess, execFile, execFileSync, spawn } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { promisify } from 'node:util'

export interface LabOptions {
  nodes: number
  /** Short tag in namespace and directory names: a lowercase letter, then up to 11 letters or digits. */
  name?: string
}

export interface LabNode {
  readonly index: number
  readonly name: string
  readonly netns: string
  readonly address: string
  readonly dataDir: string
  readonly socket: string
  pid(): number | undefined
  start(cmd: string[], env?: Record<string, string>): Promise<void>
  kill(signal?: NodeJS.Signals): Promise<void>
  stop(): Promise<void>
  exec(cmd: string[], opts?: { timeoutMs?: number }): Promise<ExecResult>
  log(): string
  /**
   * Runs `fn` at `down()`, after the node's process stopped and while its namespace still exists: for what
   * the process made outside the lab's namespaces (an agent's containers). Registered once per key.
   */
  atTeardown(key: string, fn: () => Promise<void>): void
}

export interface ExecResult {
  /** Exit status; 124 when the timeout killed the command, 128 + N when signal N ended it. */
  code: number
  stdout: string
  stderr: string
}

export interface Lab {
  readonly id: string
  readonly dir: string
  /** The namespace holding the bridge `br0` and the node-side veths `v1`, `v2`, … (for tcpdump, nft). */
  readonly lanNetns: string
  readonly nodes: LabNode[]
  node(name: string | number): LabNode
  addNode(): Promise<LabNode>
  partition(a: LabNode[], b: LabNode[]): Promise<void>
  heal(): Promise<void>
  loss(percent: number, nodes?: LabNode[]): Promise<void>
  down(): Promise<void>
}

const NETNS_DIR = '/run/netns'
const SUBNET = '198.18.0'
const FIRST_HOST = 10
const MAX_NODES = 240
const TABLE = 'km1slab'
const STATE_FILE = 'lab.json'
const STOP_GRACE_MS = 5000
const EXEC_TIMEOUT_MS = 30_000
// Lab ids look like `lab<owner pid>x<counter>[-tag]`; namespaces are `km1s-<id>-lan` and `km1s-<id>-n<i>`,
// the directory is `<tmpdir>/km1s-<id>`. The owner pid in every name lets a sweep find orphans.
const ID_PATTERN = 'lab(\\d+)x\\d+(?:-[a-z][a-z0-9]*)?'
const NETNS_NAME = new RegExp(`^km1s-(${ID_PATTERN})-(?:lan|n\\d+)$`)
const DIR_NAME = new RegExp(`^km1s-(${ID_PATTERN})$`)
const TAG = /^[a-z][a-z0-9]{0,11}$/

const execFileAsync = promisify(execFile)

interface ProcessRef {
  pid: number
  start: string
}

interface LabState {
  id: string
  owner: ProcessRef
  namespaces: string[]
  children: ProcessRef[]
}

// ---------------------------------------------------------------------------------------------------------
// Processes

/** The start time of a live process (field 22 of /proc/PID/stat), undefined if it is gone or a zombie. */
function processStart(pid: number): string | undefined {
  let stat: string
  try {
    stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
  } catch {
    return undefined
  }
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  if (fields[0] === 'Z' || fields[0] === 'X') return undefined
  return fields[19]
}

function processRef(pid: number): ProcessRef | undefined {
  const start = processStart(pid)
  return start === undefined ? undefined : { pid, start }
}

function isSameProcess(ref: ProcessRef): boolean {
  return processStart(ref.pid) === ref.start
}

function signalProcess(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal)
  } catch {
    // already gone
  }
}

function netnsPath(name: string): string {
  return path.join(NETNS_DIR, name)
}

/** The id of a named network namespace as /proc/PID/ns/net shows it, e.g. `net:[4026532384]`. */
function netnsId(name: string): string | undefined {
  try {
    return `net:[${fs.statSync(netnsPath(name)).ino}]`
  } catch {
    return undefined // deleted
  }
}

function netnsOf(pid: number): string | undefined {
  try {
    return fs.readlinkSync(`/proc/${pid}/ns/net`)
  } catch {
    return undefined
  }
}

/** Processes whose network namespace is one of `namespaces` (what `ip netns pids` finds, for all at once). */
function processesInNetns(namespaces: string[]): ProcessRef[] {
  const wanted = new Set(namespaces.map(netnsId).filter((id) => id !== undefined))
  if (wanted.size === 0) return []
  const found: ProcessRef[] = []
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    const pid = Number(entry)
    const netns = netnsOf(pid)
    if (pid === process.pid || netns === undefined || !wanted.has(netns)) continue
    const ref = processRef(pid)
    if (ref) found.push(ref)
  }
  return found
}

async function waitUntilGone(refs: ProcessRef[], timeoutMs: number): Promise<ProcessRef[]> {
  const deadline = Date.now() + timeoutMs
  let alive = refs.filter(isSameProcess)
  while (alive.length > 0 && Date.now() < deadline) {
    await sleep(20)
    alive = alive.filter(isSameProcess)
  }
  return alive
}

/** TERM (unless `graceMs` is 0), wait, then KILL whatever still runs, and wait for that too. */
async function terminate(refs: ProcessRef[], graceMs: number): Promise<void> {
  let alive = refs.filter(isSameProcess)
  if (graceMs > 0) {
    for (const ref of alive) signalProcess(ref.pid, 'SIGTERM')
    alive = await waitUntilGone(alive, graceMs)
  }
  for (const ref of alive) signalProcess(ref.pid, 'SIGKILL')
  await waitUntilGone(alive, 2000)
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms))
}

// ---------------------------------------------------------------------------------------------------------
// Commands

/** Runs a command with `input` on stdin; rejects with its stderr (and the failing batch line) on failure. */
function run(cmd: string, args: string[], input = ''): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
      stdout += chunk
    })
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => {
      stderr += chunk
    })
    child.stdin.on('error', () => {})
    child.on('error', reject)
    child.on('close', (code, signal) => {
      if (code === 0) return resolve(stdout)
      const line = /-:(\d+)/.exec(stderr)?.[1]
      const failed = line ? `\n  at input line ${line}: ${input.split('\n')[Number(line) - 1]}` : ''
      const status = signal ?? `exit ${code}`
      reject(new Error(`${[cmd, ...args].join(' ')} failed (${status}): ${stderr.trim()}${failed}`))
    })
    child.stdin.end(input)
  })
}

/** `ip -batch -` in namespace `netns` (or the current one when undefined). */
function ipBatch(lines: string[], netns?: string, opts: { force?: boolean } = {}): Promise<string> {
  const args = [...(netns ? ['-n', netns] : []), ...(opts.force ? ['-force'] : []), '-batch', '-']
  return run('ip', args, `${lines.join('\n')}\n`)
}

function deleteNamespacesSync(namespaces: string[]): void {
  const existing = namespaces.filter((name) => fs.existsSync(netnsPath(name)))
  if (existing.length === 0) return
  try {
    execFileSync('ip', ['-force', '-batch', '-'], {
      input: `${existing.map((name) => `netns del ${name}`).join('\n')}\n`,
      stdio: ['pipe', 'ignore', 'ignore'],
    })
  } catch {
    // best effort while exiting; a later sweep finds what is left
  }
}

async function deleteNamespaces(namespaces: string[]): Promise<void> {
  const existing = namespaces.filter((name) => fs.existsSync(netnsPath(name)))
  if (existing.length === 0) return
  await ipBatch(
    existing.map((name) => `netns del ${name}`),
    undefined,
    { force: true },
  ).catch(() => {
    // -force reports a namespace deleted meanwhile (a concurrent sweep) as a failure; check what remains
  })
  const left = existing.filter((name) => fs.existsSync(netnsPath(name)))
  if (left.length > 0) throw new Error(`could not delete network namespaces ${left.join(', ')}`)
}

/** The prefix that makes a command run in namespace `netns`, and die with the process that started it. */
function inNetns(netns: string, cmd: string[]): [string, string[]] {
  return ['setpriv', ['--pdeathsig', 'SIGKILL', 'nsenter', `--net=${netnsPath(netns)}`, '--', ...cmd]]
}

// ---------------------------------------------------------------------------------------------------------
// nftables

interface Faults {
  partitions: Array<[LabNode[], LabNode[]]>
  /** Node name to the percentage of frames from or to it that are dropped. */
  loss: Map<string, number>
  nodes: LabNode[]
}

function bridgePort(node: LabNode): string {
  return `v${node.index}`
}

function portSet(nodes: LabNode[]): string {
  return `{ ${nodes.map((node) => `"${bridgePort(node)}"`).join(', ')} }`
}

/**
 * The whole ruleset of the lab's bridge table, as one `nft -f` transaction that replaces the previous one.
 * The forward hook sees each bridged frame once per egress port, so flooded multicast is cut per port too.
 * A frame from or to a lossy node jumps to that node's loss chain once (goto), so it is dropped at most
 * with that node's percentage, not twice when both ends are lossy.
 */
function renderRules(faults: Faults): string {
  const rules: string[] = []
  for (const [a, b] of faults.partitions) {
    rules.push(`iifname ${portSet(a)} oifname ${portSet(b)} drop`)
    rules.push(`iifname ${portSet(b)} oifname ${portSet(a)} drop`)
  }
  // nodes grouped by their loss, in hundredths of a percent so that 0.5 % works
  const byThreshold = new Map<number, LabNode[]>()
  for (const node of faults.nodes) {
    const threshold = Math.round((faults.loss.get(node.name) ?? 0) * 100)
    if (threshold > 0) byThreshold.set(threshold, [...(byThreshold.get(threshold) ?? []), node])
  }
  for (const direction of ['iifname', 'oifname']) {
    for (const [threshold, nodes] of byThreshold) {
      rules.push(`${direction} ${portSet(nodes)} goto loss_${threshold}`)
    }
  }
  const lossChains = [...byThreshold.keys()].map((threshold) => {
    const rule = threshold >= 10_000 ? 'drop' : `numgen random mod 10000 < ${threshold} drop`
    return `  chain loss_${threshold} {\n    ${rule}\n  }\n`
  })
  return [
    `table bridge ${TABLE} {}`,
    `delete table bridge ${TABLE}`,
    `table bridge ${TABLE} {`,
    ...lossChains,
    '  chain forward {',
    '    type filter hook forward priority 0; policy accept;',
    ...rules.map((rule) => `    ${rule}`),
    '  }',
    '}',
    '',
  ].join('\n')
}

// ---------------------------------------------------------------------------------------------------------
// The process-wide registry of live labs and the cleanup on exit and on signals

const liveLabs = new Set<LabImpl>()
/** Ids this process allocated: a namespace carrying our own pid but not one of these is a leftover. */
const allocatedIds = new Set<string>()
let labCounter = 0
let exitHandlersInstalled = false
let signalled = false

function installExitHandlers(): void {
  if (exitHandlersInstalled) return
  exitHandlersInstalled = true
  // 'exit' also runs after an uncaught exception or unhandled rejection; only synchronous work is possible.
  process.on('exit', () => {
    for (const lab of liveLabs) lab.destroySync()
  })
  const signals: Array<[NodeJS.Signals, number]> = [
    ['SIGINT', 130],
    ['SIGTERM', 143],
    ['SIGHUP', 129],
  ]
  for (const [signal, code] of signals) {
    process.on(signal, () => {
      // A second signal skips the graceful stop; the 'exit' handler still kills and deletes synchronously.
      if (signalled) process.exit(code)
      signalled = true
      // Whoever sent the signal (a test runner, a terminal) may be gone with the other end of our stdout and
      // stderr; a write failing with EPIPE must not kill this process before its labs are down.
      for (const stream of [process.stdout, process.stderr]) stream.on('error', () => {})
      Promise.allSettled([...liveLabs].map((lab) => lab.down())).finally(() => process.exit(code))
    })
  }
}

// ---------------------------------------------------------------------------------------------------------
// Nodes

class NodeImpl implements LabNode {
  readonly index: number
  readonly name: string
  readonly netns: string
  readonly address: string
  readonly dataDir: string
  readonly socket: string
  readonly #lab: LabImpl
  #child: ChildProcess | undefined
  #exited: Promise<void> = Promise.resolve()
  readonly teardowns = new Map<string, () => Promise<void>>()

  constructor(lab: LabImpl, index: number) {
    this.#lab = lab
    this.index = index
    this.name = `n${index}`
    this.netns = `km1s-${lab.id}-${this.name}`
    this.address = `${SUBNET}.${FIRST_HOST + index}`
    this.dataDir = path.join(lab.dir, this.name)
    this.socket = path.join(this.dataDir, 'km1s.sock')
  }

  atTeardown(key: string, fn: () => Promise<void>): void {
    if (!this.teardowns.has(key)) this.teardowns.set(key, fn)
  }

  get logFile(): string {
    return path.join(this.dataDir, 'agent.log')
  }

  pid(): number | undefined {
    const child = this.#child
    if (!child || child.exitCode !== null || child.signalCode !== null) return undefined
    return child.pid
  }

  async start(cmd: string[], env: Record<string, string> = {}): Promise<void> {
    const running = this.pid()
    if (running !== undefined)
      throw new Error(`${this.name} already runs pid ${running}: stop() or kill() it first`)
    if (cmd.length === 0) throw new Error('start() needs a command')
    this.#lab.assertUp()
    const log = fs.openSync(this.logFile, 'a')
    let child: ChildProcess
    let exited: Promise<void>
    try {
      const [file, args] = inNetns(this.netns, cmd)
      // Detached, so that a terminal's Ctrl-C reaches only the lab, which then stops its processes in order.
      child = spawn(file, args, {
        stdio: ['ignore', log, log],
        env: { ...process.env, ...env },
        detached: true,
      })
      exited = new Promise((resolve) => child.once('exit', () => resolve()))
      await new Promise<void>((resolve, reject) => {
        child.once('spawn', resolve)
        child.once('error', reject)
      })
    } finally {
      fs.closeSync(log)
    }
    // Unref'd: a lab that a test forgot to take down does not keep Node alive; the exit handler removes it.
    child.unref()
    this.#child = child
    this.#exited = exited
    const ref = child.pid === undefined ? undefined : processRef(child.pid)
    if (ref) this.#lab.recordChild(ref)
    // setpriv and nsenter run first in our own namespace: return once the process is in the node's
    await waitFor(
      `${this.name}'s process to enter ${this.netns}`,
      async () => this.pid() === undefined || netnsOf(child.pid ?? 0) === netnsId(this.netns),
      { timeoutMs: 5000, intervalMs: 2 },
    )
  }

  async kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    const child = this.#child
    if (this.pid() === undefined || !child) return
    child.kill(signal)
    await this.#waitExit(child)
  }

  async stop(): Promise<void> {
    const child = this.#child
    if (this.pid() === undefined || !child) return
    child.kill('SIGTERM')
    let timer: NodeJS.Timeout | undefined
    const grace = new Promise<boolean>((resolve) => {
      timer = setTimeout(() => resolve(true), STOP_GRACE_MS)
    })
    const timedOut = await Promise.race([this.#waitExit(child).then(() => false), grace])
    clearTimeout(timer)
    if (timedOut && this.pid() !== undefined) {
      child.kill('SIGKILL')
      await this.#waitExit(child)
    }
  }

  async #waitExit(child: ChildProcess): Promise<void> {
    // ref while waiting, or Node may exit with this promise pending when the child is its only handle
    child.ref()
    try {
      await this.#exited
    } finally {
      child.unref()
    }
  }

  async exec(cmd: string[], opts: { timeoutMs?: number } = {}): Promise<ExecResult> {
    this.#lab.assertUp()
    const [file, args] = inNetns(this.netns, cmd)
    const timeout = opts.timeoutMs ?? EXEC_TIMEOUT_MS
    try {
      const { stdout, stderr } = await execFileAsync(file, args, {
        timeout,
        killSignal: 'SIGKILL',
        maxBuffer: 64 * 1024 * 1024,
        encoding: 'utf8',
      })
      return { code: 0, stdout, stderr }
    } catch (error) {
      const failure = error as NodeJS.ErrnoException & {
        code?: number | string
        killed?: boolean
        signal?: NodeJS.Signals | null
        stdout?: string
        stderr?: string
      }
      if (typeof failure.code === 'string') throw error // could not start at all (ENOENT, …)
      let code: number
      if (failure.killed && failure.signal === 'SIGKILL') code = 124
      else if (failure.signal) code = 128 + (os.constants.signals[failure.signal] ?? 0)
      else code = failure.code ?? 1
      return { code, stdout: failure.stdout ?? '', stderr: failure.stderr ?? '' }
    }
  }

  log(): string {
    try {
      return fs.readFileSync(this.logFile, 'utf8')
    } catch {
      return ''
    }
  }

  runningChild(): ProcessRef | undefined {
    const pid = this.pid()
    return pid === undefined ? undefined : processRef(pid)
  }
}

// ---------------------------------------------------------------------------------------------------------
// Labs

class LabImpl implements Lab {
  readonly id: string
  readonly dir: string
  readonly lanNetns: string
  readonly nodes: NodeImpl[] = []
  readonly #owner: ProcessRef
  readonly #children: ProcessRef[] = []
  readonly #faults: Faults
  #rulesApplied: Promise<void> = Promise.resolve()
  #down: Promise<void> | undefined

  constructor(id: string) {
    this.id = id
    this.dir = path.join(os.tmpdir(), `km1s-${id}`)
    this.lanNetns = `km1s-${id}-lan`
    const owner = processRef(process.pid)
    if (!owner) throw new Error('cannot read /proc/self/stat: the lab needs Linux /proc')
    this.#owner = owner
    this.#faults = { partitions: [], loss: new Map(), nodes: this.nodes }
  }

  get namespaces(): string[] {
    return [this.lanNetns, ...this.nodes.map((node) => node.netns)]
  }

  assertUp(): void {
    if (this.#down) throw new Error(`lab ${this.id} is down`)
  }

  node(name: string | number): LabNode {
    const index = typeof name === 'number' ? name : Number(/^n?(\d+)$/.exec(name)?.[1])
    const node = this.nodes[index - 1]
    if (!node) throw new Error(`lab ${this.id} has no node ${name}: it has n1 to n${this.nodes.length}`)
    return node
  }

  /** Creates the lan namespace and its bridge, then `count` nodes. */
  async build(count: number): Promise<void> {
    fs.mkdirSync(this.dir, { mode: 0o755 })
    this.writeState()
    const nodes = this.#newNodes(count)
    await ipBatch([`netns add ${this.lanNetns}`, ...nodes.map((node) => `netns add ${node.netns}`)])
    await ipBatch(
      [
        'link set lo up',
        // no snooping: every multicast frame is flooded, as on a dumb switch (mDNS needs nothing else)
        'link add name br0 type bridge mcast_snooping 0',
        'link set br0 addrgenmode none',
        'link set br0 up',
        ...nodes.flatMap((node) => this.#portCommands(node)),
      ],
      this.lanNetns,
    )
    await Promise.all(nodes.map((node) => ipBatch(this.#nodeCommands(node), node.netns)))
  }

  async addNode(): Promise<LabNode> {
    this.assertUp()
    const [node] = this.#newNodes(1)
    if (!node) throw new Error('unreachable')
    await ipBatch([`netns add ${node.netns}`])
    await ipBatch(this.#portCommands(node), this.lanNetns)
    await ipBatch(this.#nodeCommands(node), node.netns)
    return node
  }

  #newNodes(count: number): NodeImpl[] {
    if (this.nodes.length + count > MAX_NODES) {
      throw new Error(`a lab holds at most ${MAX_NODES} nodes (one /24 of ${SUBNET}.0)`)
    }
    const created: NodeImpl[] = []
    for (let i = 0; i < count; i++) {
      const node = new NodeImpl(this, this.nodes.length + 1)
      fs.mkdirSync(node.dataDir)
      this.nodes.push(node)
      created.push(node)
    }
    this.writeState()
    return created
  }

  /** Commands in the lan namespace: the veth pair, its far end moved into the node's namespace. */
  #portCommands(node: NodeImpl): string[] {
    const port = bridgePort(node)
    return [
      `link add name ${port} type veth peer name eth0 netns ${node.netns}`,
      `link set ${port} addrgenmode none`,
      `link set ${port} master br0`,
      `link set ${port} up`,
    ]
  }

  /** Commands in the node's namespace. No default route: only the lab's /24 and multicast are reachable. */
  #nodeCommands(node: NodeImpl): string[] {
    return [
      'link set lo up',
      'link set eth0 addrgenmode none',
      `addr add ${node.address}/24 dev eth0`,
      'link set eth0 up',
      'route add 224.0.0.0/4 dev eth0',
    ]
  }

  async partition(a: LabNode[], b: LabNode[]): Promise<void> {
    this.assertUp()
    const both = a.filter((node) => b.includes(node))
    if (both.length > 0) {
      throw new Error(`cannot partition ${both.map((node) => node.name).join(', ')} from itself`)
    }
    if (a.length === 0 || b.length === 0) return
    this.#faults.partitions.push([this.#own(a), this.#own(b)])
    await this.#applyRules()
  }

  async heal(): Promise<void> {
    this.assertUp()
    this.#faults.partitions = []
    await this.#applyRules()
  }

  async loss(percent: number, nodes: LabNode[] = this.nodes): Promise<void> {
    this.assertUp()
    if (!Number.isFinite(percent) || percent < 0 || percent > 100) {
      throw new Error(`loss takes a percentage from 0 to 100, not ${percent}`)
    }
    for (const node of this.#own(nodes)) {
      if (percent === 0) this.#faults.loss.delete(node.name)
      else this.#faults.loss.set(node.name, percent)
    }
    await this.#applyRules()
  }

  #own(nodes: LabNode[]): LabNode[] {
    for (const node of nodes) {
      if (this.nodes[node.index - 1] !== node) throw new Error(`${node.name} is not a node of lab ${this.id}`)
    }
    return [...nodes]
  }

  /** One nft transaction from the current faults; serialised so that the last call's view wins. */
  #applyRules(): Promise<void> {
    const apply = async () => {
      const [file, args] = inNetns(this.lanNetns, ['nft', '-f', '-'])
      await run(file, args, renderRules(this.#faults))
    }
    this.#rulesApplied = this.#rulesApplied.then(apply, apply)
    return this.#rulesApplied
  }

  recordChild(ref: ProcessRef): void {
    this.#children.push(ref)
    this.writeState()
  }

  writeState(): void {
    const state: LabState = {
      id: this.id,
      owner: this.#owner,
      namespaces: this.namespaces,
      children: this.#children.filter(isSameProcess),
    }
    const file = path.join(this.dir, STATE_FILE)
    fs.writeFileSync(`${file}.tmp`, `${JSON.stringify(state, null, 2)}\n`)
    fs.renameSync(`${file}.tmp`, file)
  }

  down(): Promise<void> {
    this.#down ??= this.#takeDown()
    return this.#down
  }

  async #takeDown(): Promise<void> {
    try {
      await Promise.all(this.nodes.map((node) => node.stop()))
      for (const node of this.nodes)
        for (const [key, fn] of node.teardowns)
          await fn().catch((err) => process.stderr.write(`lab teardown ${node.name} ${key} failed: ${err}\n`))
      // whatever the started processes left running in the namespaces (their children), or a person's shell
      await terminate(processesInNetns(this.namespaces), 2000)
      await deleteNamespaces(this.namespaces)
      keepLogs(this)
      fs.rmSync(this.dir, { recursive: true, force: true })
    } finally {
      liveLabs.delete(this)
    }
  }

  /** For the 'exit' handler: KILL everything, delete the namespaces and the directory, synchronously. */
  destroySync(): void {
    const refs = [
      ...this.nodes.map((node) => node.runningChild()),
      ...processesInNetns(this.namespaces),
    ].filter((ref) => ref !== undefined)
    for (const ref of refs) signalProcess(ref.pid, 'SIGKILL')
    deleteNamespacesSync(this.namespaces)
    fs.rmSync(this.dir, { recursive: true, force: true })
    liveLabs.delete(this)
  }
}

/**
 * KM1S_LAB_KEEP_LOGS=DIR: every agent's log is copied to DIR/<lab id>-<node>.log before the lab's directory
 * goes, to read after a flaky run. Off by default: the lab leaves nothing behind.
 */
function keepLogs(lab: Lab): void {
  const dir = process.env.KM1S_LAB_KEEP_LOGS
  if (!dir) return
  fs.mkdirSync(dir, { recursive: true })
  for (const node of lab.nodes) {
    const text = node.log() // '' for a node whose agent never started
    if (text !== '') fs.writeFileSync(path.join(dir, `${lab.id}-${node.name}.log`), text)
  }
}

function allocateId(tag: string | undefined): string {
  for (;;) {
    labCounter += 1
    const id = `lab${process.pid}x${labCounter}${tag ? `-${tag}` : ''}`
    // skip names a dead process with our pid left behind; the sweep removes those
    const taken =
      fs.existsSync(netnsPath(`km1s-${id}-lan`)) || fs.existsSync(path.join(os.tmpdir(), `km1s-${id}`))
    allocatedIds.add(id)
    if (!taken) return id
  }
}

export async function createLab(opts: LabOptions): Promise<Lab> {
  if (!Number.isInteger(opts.nodes) || opts.nodes < 0 || opts.nodes > MAX_NODES) {
    throw new Error(`a lab has from 0 to ${MAX_NODES} nodes, not ${opts.nodes}`)
  }
  if (opts.name !== undefined && !TAG.test(opts.name)) {
    throw new Error(
      `lab name ${JSON.stringify(opts.name)} must be a lowercase letter then up to 11 letters or digits`,
    )
  }
  if (process.getuid?.() !== 0) throw new Error('the lab needs root (network namespaces, nftables)')
  installExitHandlers()
  // a leftover that cannot be removed must not stop new labs; its names cannot collide with ours
  await sweepStaleLabs().catch((error: Error) => process.emitWarning(`lab sweep: ${error.message}`))
  const lab = new LabImpl(allocateId(opts.name))
  liveLabs.add(lab)
  try {
    await lab.build(opts.nodes)
  } catch (error) {
    await lab.down().catch(() => {})
    throw error
  }
  return lab
}

// ---------------------------------------------------------------------------------------------------------
// Sweeping what dead owners left

interface Leftover {
  ownerPid: number
  state: LabState | undefined
  dir: string | undefined
  namespaces: Set<string>
}

function readState(dir: string): LabState | undefined {
  try {
    return JSON.parse(fs.readFileSync(path.join(dir, STATE_FILE), 'utf8')) as LabState
  } catch {
    return undefined
  }
}

function listDir(dir: string): string[] {
  try {
    return fs.readdirSync(dir)
  } catch {
    return []
  }
}

function ownerAlive(id: string, leftover: Leftover): boolean {
  if (leftover.ownerPid === process.pid) return allocatedIds.has(id)
  if (leftover.state?.owner) return isSameProcess(leftover.state.owner)
  return processStart(leftover.ownerPid) !== undefined
}

/** Removes the namespaces, processes and directories of labs whose owner process has died; returns their ids. */
export async function sweepStaleLabs(): Promise<string[]> {
  const leftovers = new Map<string, Leftover>()
  const leftoverOf = (id: string, ownerPid: string) => {
    let leftover = leftovers.get(id)
    if (!leftover) {
      leftover = { ownerPid: Number(ownerPid), state: undefined, dir: undefined, namespaces: new Set() }
      leftovers.set(id, leftover)
    }
    return leftover
  }
  for (const entry of listDir(os.tmpdir())) {
    const match = DIR_NAME.exec(entry)
    if (!match?.[1] || !match[2]) continue
    const leftover = leftoverOf(match[1], match[2])
    leftover.dir = path.join(os.tmpdir(), entry)
    leftover.state = readState(leftover.dir)
    for (const name of leftover.state?.namespaces ?? []) {
      if (NETNS_NAME.exec(name)?.[1] === match[1]) leftover.namespaces.add(name)
    }
  }
  for (const entry of listDir(NETNS_DIR)) {
    const match = NETNS_NAME.exec(entry)
    if (match?.[1] && match[2]) leftoverOf(match[1], match[2]).namespaces.add(entry)
  }
  const stale = [...leftovers].filter(([id, leftover]) => !ownerAlive(id, leftover))
  if (stale.length === 0) return []
  const namespaces = stale.flatMap(([, leftover]) => [...leftover.namespaces])
  const children = stale.flatMap(([, leftover]) => leftover.state?.children ?? []).filter(isSameProcess)
  // The owner is dead, so nobody waits for a graceful stop: KILL at once.
  await terminate([...children, ...processesInNetns(namespaces)], 0)
  await deleteNamespaces(namespaces)
  for (const [, leftover] of stale) {
    if (leftover.dir) fs.rmSync(leftover.dir, { recursive: true, force: true })
  }
  return stale.map(([id]) => id)
}

// ---------------------------------------------------------------------------------------------------------
// Waiting

export async function waitFor<T>(
  what: string,
  fn: () => Promise<T | undefined | false>,
  opts: { timeoutMs?: number; intervalMs?: number } = {},
): Promise<T> {
  const timeoutMs = opts.timeoutMs ?? 10_000
  const intervalMs = opts.intervalMs ?? 100
  const deadline = Date.now() + timeoutMs
  let lastError: unknown
  for (;;) {
    try {
      const value = await fn()
      if (value !== undefined && value !== false) return value
    } catch (error) {
      lastError = error
    }
    if (Date.now() >= deadline) break
    await sleep(Math.min(intervalMs, Math.max(0, deadline - Date.now())))
  }
  const last =
    lastError === undefined
      ? ''
      : `; last error: ${lastError instanceof Error ? lastError.message : String(lastError)}`
  throw new Error(`timed out after ${timeoutMs}ms waiting for ${what}${last}`, { cause: lastError })
}
