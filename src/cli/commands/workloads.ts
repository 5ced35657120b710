// Workloads from any node: run, apply, get, ps, scale, stop, rm. The CLI validates first (errors name the
// field), then writes through the local agent, which stores the workload durably and gossips it.
import { readFile } from 'node:fs/promises'
import { type Command, InvalidArgumentError, Option } from 'commander'
import type { ApiClient as ApiClientType } from '../../api/client.ts'
import { ApiClient } from '../../api/index.ts'
import type { ReplicaView } from '../../api/schemas.ts'
import { Km1sError } from '../../common/errors.ts'
import type { WorkloadValue } from '../../scheduler/workload.ts'
import { globals } from '../main.ts'
import { humanDuration, printJson, printTable } from '../output.ts'
import type { RunOptions } from '../workload-flags.ts'
import { pushPath } from './artifacts.ts'

// Workload parsing brings the record schemas (with libp2p's peer ids), and manifests bring YAML: loaded by
// the commands that parse or hash a workload, so that ps, logs and the rest start without them
// (scripts/build.mjs).
const workloadModule = () => import('../../scheduler/workload.ts')
const manifestModule = () => import('../../scheduler/manifest.ts')
const flagsModule = () => import('../workload-flags.ts')

const collect = (value: string, previous: string[]) => [...previous, value]

function whole(what: string) {
  return (value: string): number => {
    const n = Number(value)
    if (!/^\d+$/.test(value) || !Number.isSafeInteger(n))
      throw new InvalidArgumentError(`${what} is a whole number.`)
    return n
  }
}

export function psRow(r: ReplicaView): string[] {
  return [
    r.name,
    r.workload,
    r.node,
    r.state,
    r.ip ?? '-',
    r.uptime === null ? '-' : humanDuration(r.uptime),
    String(r.restarts),
    r.reason ?? '',
  ]
}

/** Waits until every replica of each workload runs the current version on a live node. */
async function waitRunning(client: ApiClientType, ws: WorkloadValue[], timeoutMs = 120_000): Promise<void> {
  const { specHash } = await workloadModule()
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const rows = await client.ps()
    const pending = ws.filter((w) => {
      if (w.stopped) return false
      const hash = specHash(w)
      const up = new Set(
        rows
          .filter((r) => r.workload === w.name && r.state === 'running' && r.spec === hash)
          .map((r) => r.index),
      )
      return up.size < w.replicas
    })
    if (pending.length === 0) return
    if (Date.now() > deadline) {
      const stuck = (await client.unplaced()).find((u) => pending.some((w) => w.name === u.workload))
      throw new Km1sError(
        'ERR_TIMEOUT',
        stuck
          ? `${stuck.workload}-${stuck.index} cannot be placed: ${stuck.reason}.`
          : `${pending.map((w) => w.name).join(', ')} did not get all replicas running in ${timeoutMs / 1000} s; 'km1s ps' shows why.`,
      )
    }
    await new Promise((r) => setTimeout(r, 50))
  }
}

async function readManifest(file: string): Promise<string> {
  try {
    if (file !== '-') return await readFile(file, 'utf8')
    const chunks: Buffer[] = []
    for await (const c of process.stdin) chunks.push(c as Buffer)
    return Buffer.concat(chunks).toString('utf8')
  } catch (err) {
    throw new Km1sError('ERR_INVALID', `Cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? err}.`)
  }
}

export function registerWorkloadCommands(program: Command): void {
  program
    .command('run')
    .description('run a workload on the cluster: replicas placed on nodes, kept running through failures')
    .argument('<name>', 'the workload; its replicas are containers NAME-0, NAME-1, …')
    .argument('<command...>', 'the program and its arguments, after --')
    .option(
      '--artifact <ref>',
      'NAME:TAG or CID of an artifact, bound at /app (default: none, the host root)',
    )
    .option('--replicas <n>', 'how many replicas (default 1)', whole('--replicas'))
    .option('--cpu <cpu>', 'CPU per replica, requested and limited: cores (0.5) or millicores (500m)')
    .option('--memory <size>', 'memory per replica, requested and limited (default 128Mi)')
    .option('--arch <arch>', 'only nodes of this architecture (amd64, arm64, armv7)')
    .option('--label <k=v>', 'only nodes with this label, repeatable', collect, [])
    .option('--port <port>', 'a port the program listens on, repeatable', collect, [])
    .option('--service <name>', 'the service name its replicas serve: a virtual IP and NAME.km1s.internal')
    .option('--headless', 'the service gets no virtual IP: DNS answers the healthy replicas themselves')
    .option('--health-http <path>', 'health check: GET PATH on the first port answers 2xx or 3xx')
    .option('--health-tcp [port]', 'health check: a TCP connection to PORT (default the first port) opens')
    .option('--health-exec <cmd>', 'health check: sh -c CMD in the container exits 0')
    .option('--health-port <port>', 'the port of an http or tcp check (default the first --port)')
    .option('--health-interval <duration>', 'time between checks: 2s, 500ms (default 2s)')
    .option('--health-timeout <duration>', 'a check that takes longer fails (default 1s)')
    .option('--health-healthy-after <n>', 'successes in a row before a replica serves (default 1)')
    .option('--health-unhealthy-after <n>', 'failures in a row before it leaves its service (default 1)')
    .option('--health-restart-after <n>', 'failures in a row before it is made again; 0 never (default 3)')
    .addOption(
      new Option('--restart <policy>', 'restart policy (default always)').choices([
        'always',
        'on-failure',
        'never',
      ]),
    )
    .option('--env <K=V>', 'an environment variable, repeatable', collect, [])
    .option('--exclusive', 'run only on the side of a network split that sees a majority of the nodes')
    .option('--wait', 'wait until every replica is running')
    .option('--timeout <seconds>', 'how long --wait waits (default 120)', whole('--timeout'), 120)
    .action(async (name: string, command: string[], opts: RunOptions & { timeout: number }, cmd: Command) => {
      const g = globals(cmd)
      const { isLocalArtifact, workloadFromFlags } = await flagsModule()
      workloadFromFlags(name, command, { ...opts, artifact: undefined }) // a bad flag fails before a push
      if (isLocalArtifact(opts.artifact)) {
        // A local path is pushed first (tag NAME:run) and the workload names its CID, so a changed
        // file is a changed spec and rolls out.
        const pushed = await pushPath(g.socket, opts.artifact, `${name}:run`, {
          arch: opts.arch,
          bar: !g.json,
        })
        opts.artifact = pushed.cid
      }
      const w = workloadFromFlags(name, command, opts)
      const client = new ApiClient(g.socket)
      const stored = await client.putWorkload(w)
      if (opts.wait) await waitRunning(client, [stored], opts.timeout * 1000)
      if (g.json) return printJson(stored)
      process.stdout.write(
        `Workload ${stored.name}: ${stored.replicas} replica${stored.replicas === 1 ? '' : 's'}${opts.wait ? ' running' : ' scheduled'}; 'km1s ps' shows them.\n`,
      )
    })

  program
    .command('apply')
    .description('create or update the workloads of a YAML manifest (several documents per file)')
    .requiredOption('-f, --file <file>', 'the manifest, or - for stdin')
    .option('--wait', 'wait until every replica is running')
    .option('--timeout <seconds>', 'how long --wait waits (default 120)', whole('--timeout'), 120)
    .action(async (opts: { file: string; wait?: boolean; timeout: number }, cmd: Command) => {
      const g = globals(cmd)
      // Every document is checked before anything is written: a bad manifest changes nothing.
      const { parseManifests } = await manifestModule()
      const ws = parseManifests(await readManifest(opts.file), opts.file === '-' ? 'stdin' : opts.file)
      const client = new ApiClient(g.socket)
      const stored: WorkloadValue[] = []
      for (const w of ws) stored.push(await client.putWorkload(w))
      if (opts.wait) await waitRunning(client, stored, opts.timeout * 1000)
      if (g.json) return printJson(stored)
      for (const w of stored) process.stdout.write(`Workload ${w.name} applied (${w.replicas} replicas).\n`)
    })

  program
    .command('get')
    .description('the workloads (all, or one): -o yaml prints a manifest that apply reads back')
    .argument('[name]', 'one workload')
    .addOption(
      new Option('-o, --output <format>', 'output format')
        .choices(['table', 'yaml', 'json'])
        .default('table'),
    )
    .action(async (name: string | undefined, opts: { output: string }, cmd: Command) => {
      const g = globals(cmd)
      const client = new ApiClient(g.socket)
      const { specHash } = await workloadModule()
      const { workloadsToYaml } = await manifestModule()
      let ws = await client.workloads()
      if (name !== undefined) {
        ws = ws.filter((w) => w.name === name)
        if (ws.length === 0)
          throw new Km1sError('ERR_NOT_FOUND', `There is no workload named ${name}; 'km1s get' lists them.`)
      }
      if (opts.output === 'yaml') return void process.stdout.write(workloadsToYaml(ws))
      if (g.json || opts.output === 'json') return printJson(name !== undefined ? ws[0] : ws)
      const [rows, unplaced] = await Promise.all([client.ps(), client.unplaced()])
      printTable(
        ['NAME', 'READY', 'ARTIFACT', 'COMMAND', 'NOTE'],
        ws.map((w) => {
          const hash = specHash(w)
          const up = new Set(
            rows
              .filter((r) => r.workload === w.name && r.state === 'running' && r.spec === hash)
              .map((r) => r.index),
          ).size
          const stuck = unplaced.filter((u) => u.workload === w.name)
          return [
            w.name,
            w.stopped ? 'stopped' : `${up}/${w.replicas}`,
            w.artifact ?? '-',
            w.command.join(' '),
            stuck.length > 0 ? `${stuck.length} unplaced: ${stuck[0]?.reason}` : '',
          ]
        }),
      )
    })

  program
    .command('ps')
    .description('every replica of every workload, cluster-wide')
    .option('--workload <name>', 'only this workload')
    .action(async (opts: { workload?: string }, cmd: Command) => {
      const g = globals(cmd)
      const rows = (await new ApiClient(g.socket).ps()).filter(
        (r) => !opts.workload || r.workload === opts.workload,
      )
      if (g.json) return printJson(rows)
      printTable(['NAME', 'WORKLOAD', 'NODE', 'STATE', 'IP', 'UPTIME', 'RESTARTS', 'REASON'], rows.map(psRow))
    })

  program
    .command('scale')
    .description('change how many replicas a workload has (also starts a stopped one)')
    .argument('<name>', 'the workload')
    .argument('<replicas>', 'how many', whole('replicas'))
    .action(async (name: string, replicas: number, _o: unknown, cmd: Command) => {
      const g = globals(cmd)
      const w = await new ApiClient(g.socket).scaleWorkload(name, replicas)
      if (g.json) return printJson(w)
      process.stdout.write(`Workload ${name} scaled to ${w.replicas} replicas.\n`)
    })

  program
    .command('stop')
    .description('stop every replica of a workload but keep it (km1s scale starts it again)')
    .argument('<name>', 'the workload')
    .action(async (name: string, _o: unknown, cmd: Command) => {
      const g = globals(cmd)
      const w = await new ApiClient(g.socket).stopWorkload(name)
      if (g.json) return printJson(w)
      process.stdout.write(`Workload ${name} stopped.\n`)
    })

  program
    .command('rm')
    .description('remove a workload and stop its replicas')
    .argument('<name>', 'the workload')
    .action(async (name: string, _o: unknown, cmd: Command) => {
      const g = globals(cmd)
      await new ApiClient(g.socket).removeWorkload(name)
      if (g.json) return printJson({ name })
      process.stdout.write(`Workload ${name} removed.\n`)
    })
}
