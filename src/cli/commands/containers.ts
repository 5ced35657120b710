// Containers: list (this node's, one node's or every node's), create from a spec file and remove on this
// node; logs of and exec in a container on any node (the agent proxies to the node that runs it).
import { spawnSync } from 'node:child_process'
import { readFile } from 'node:fs/promises'
import { constants } from 'node:os'
import { extname } from 'node:path'
import { finished } from 'node:stream/promises'
import { type Command, InvalidArgumentError } from 'commander'
import type { ExecChannel } from '../../api/client.ts'
import { ApiClient, type ContainerStatusView } from '../../api/index.ts'
import { Km1sError } from '../../common/errors.ts'
import type * as z from '../../common/schema.ts'
import { parseSince } from '../../runtime/logs.ts'
import type { ContainerSpecInput } from '../../runtime/types.ts'
import { globals } from '../main.ts'
import { exitQuietlyOnEpipe, printJson, printTable } from '../output.ts'

type ContainerView = z.infer<typeof ContainerStatusView>

/** One table row: NAME STATE IP PROCESSES (running/all) RESTARTS (sum) REASON. */
export function containerRow(c: ContainerView): string[] {
  const running = c.processes.filter((p) => p.state === 'running').length
  const restarts = c.processes.reduce((n, p) => n + p.restarts, 0)
  const down = c.processes.find((p) => p.state !== 'running' && p.lastExit !== null)
  const reason = c.error ?? (down?.lastExit ? `${down.name}: ${down.lastExit.message}` : '')
  return [c.name, c.state, c.ip ?? '-', `${running}/${c.processes.length}`, `${restarts}`, reason]
}

/** `-e K=V` arguments as an environment (split at the first `=`; a later K wins). */
export function parseEnvArgs(args: string[]): Record<string, string> {
  const env: Record<string, string> = {}
  for (const arg of args) {
    const eq = arg.indexOf('=')
    if (eq <= 0) throw new Km1sError('ERR_INVALID', `Invalid -e '${arg}': give NAME=VALUE, as in -e DEBUG=1.`)
    env[arg.slice(0, eq)] = arg.slice(eq + 1)
  }
  return env
}

/** The exit status of `km1s exec`: the program's, or 128 + N when signal N ended it. */
export function execExitCode(exit: { code: number | null; signal: string | null }): number {
  if (exit.code !== null) return exit.code
  const n = exit.signal ? (constants.signals as Record<string, number | undefined>)[exit.signal] : undefined
  return n === undefined ? 1 : 128 + n
}

/** How a log line is shown: bare when only one process can be in the output, else `process | text`. */
export function formatLogLine(e: { process: string; line: string }, prefixed: boolean): string {
  return prefixed ? `${e.process} | ${e.line}` : e.line
}

function count(what: string) {
  return (value: string): number => {
    const n = Number(value)
    if (!/^\d+$/.test(value) || !Number.isSafeInteger(n))
      throw new InvalidArgumentError(`${what} is a whole number.`)
    return n
  }
}

const collect = (value: string, previous: string[]) => [...previous, value]

async function readSpec(file: string): Promise<unknown> {
  const ext = extname(file).toLowerCase()
  if (ext === '.yaml' || ext === '.yml')
    throw new Km1sError(
      'ERR_INVALID',
      `km1s reads container specs as JSON for now; write ${file} as JSON (the same fields).`,
    )
  let text: string
  try {
    text = file === '-' ? await readStdin() : await readFile(file, 'utf8')
  } catch (err) {
    throw new Km1sError('ERR_INVALID', `Cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? err}.`)
  }
  try {
    return JSON.parse(text)
  } catch (err) {
    throw new Km1sError(
      'ERR_INVALID',
      `${file === '-' ? 'stdin' : file} is not valid JSON: ${(err as Error).message}.`,
    )
  }
}

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = []
  for await (const c of process.stdin) chunks.push(c as Buffer)
  return Buffer.concat(chunks).toString('utf8')
}

export function registerContainerCommands(program: Command): void {
  const containers = program
    .command('containers')
    .alias('ctr')
    .description('the containers on this node, on one node (--node) or on all (--all); create and rm below')
    .option('--all', 'every node of the cluster, with a NODE column')
    .option('--node <node>', "one node's containers (its name or id)")
    .action(async (opts: { all?: boolean; node?: string }, cmd: Command) => {
      const g = globals(cmd)
      const client = new ApiClient(g.socket)
      if (!opts.all && opts.node === undefined) {
        const list = await client.containers()
        if (g.json) return printJson(list)
        return printTable(['NAME', 'STATE', 'IP', 'PROCESSES', 'RESTARTS', 'REASON'], list.map(containerRow))
      }
      const nodes = await client.clusterContainers({ node: opts.node })
      for (const n of nodes)
        if (n.error !== null) process.stderr.write(`km1s: no containers from node ${n.node}: ${n.error}\n`)
      const all = nodes.flatMap((n) => n.containers.map((c) => ({ node: n.node, ...c })))
      if (g.json) return printJson(all)
      printTable(
        ['NODE', 'NAME', 'STATE', 'IP', 'PROCESSES', 'RESTARTS', 'REASON'],
        all.map((c) => [c.node, ...containerRow(c)]),
      )
    })

  containers
    .command('create')
    .description('create and start a container on this node from a JSON spec')
    .requiredOption('-f, --file <file>', 'the spec: a JSON file, or - for stdin')
    .action(async (opts: { file: string }, cmd: Command) => {
      const g = globals(cmd)
      const spec = await readSpec(opts.file)
      const c = await new ApiClient(g.socket, { timeoutMs: 120_000 }).createContainer(
        spec as ContainerSpecInput,
      )
      if (g.json) return printJson(c)
      const [, state, ip, procs, , reason] = containerRow(c)
      process.stdout.write(
        `Created container ${c.name}: ${state}, ${procs} processes running, IP ${ip}${reason ? ` (${reason})` : ''}.\n`,
      )
    })

  containers
    .command('rm')
    .alias('remove')
    .description('stop and remove a container on this node')
    .argument('<name>', 'the container')
    .action(async (name: string, _opts: unknown, cmd: Command) => {
      const g = globals(cmd)
      await new ApiClient(g.socket, { timeoutMs: 120_000 }).removeContainer(name)
      if (g.json) return printJson({ name })
      process.stdout.write(`Removed container ${name}.\n`)
    })

  program
    .command('logs')
    .description("a container's output on any node: stdout and stderr of its processes, oldest first")
    .argument('<container>', 'the container')
    .option('-f, --follow', 'keep printing new lines until interrupted')
    .option('--process <name>', 'only this process')
    .option('--since <when>', 'only lines since a duration ago (10s, 5m, 2h, 1d) or an ISO time')
    .option('--tail <n>', 'only the last N lines (then follow, with -f)', count('--tail'))
    .action(
      async (
        container: string,
        opts: { follow?: boolean; process?: string; since?: string; tail?: number },
        cmd: Command,
      ) => {
        const g = globals(cmd)
        const sinceMs = opts.since === undefined ? undefined : parseSince(opts.since, Date.now())
        const client = new ApiClient(g.socket)
        let prefixed = false
        if (opts.process === undefined && !g.json) {
          // Here, else wherever it runs (which gives an unknown container its error before any output).
          const c =
            (await client.containers()).find((x) => x.name === container) ??
            (await client.clusterContainers({ container }))[0]?.containers[0]
          prefixed = (c?.processes.length ?? 0) > 1
        }
        exitQuietlyOnEpipe()
        const ac = new AbortController()
        const query = { container, process: opts.process, sinceMs, tail: opts.tail, follow: opts.follow }
        for await (const e of client.logs(query, ac.signal)) {
          process.stdout.write(g.json ? `${JSON.stringify(e)}\n` : `${formatLogLine(e, prefixed)}\n`)
        }
      },
    )

  program
    .command('exec')
    .description('run a command in a container on any node (-it for a terminal); exits with its status')
    .argument('<container>', 'the container')
    .argument('<command...>', 'the command and its arguments, after --')
    .option('-i, --interactive', "send this terminal's input to the command")
    .option('-t, --tty', 'give the command a terminal')
    .option('--process <name>', 'whose user, environment and directory to use (default: the first process)')
    .option('-e, --env <NAME=VALUE>', 'set an environment variable, repeatable', collect, [])
    .action(
      async (
        container: string,
        args: string[],
        opts: { interactive?: boolean; tty?: boolean; process?: string; env: string[] },
        cmd: Command,
      ) => {
        const g = globals(cmd)
        const tty = Boolean(opts.tty)
        const env = parseEnvArgs(opts.env)
        if (tty && env.TERM === undefined) env.TERM = process.env.TERM || 'xterm'
        const out = process.stdout
        const channel = await new ApiClient(g.socket).exec({
          container,
          args,
          tty,
          process: opts.process,
          env,
          // A terminal whose size nobody set (script without one outside it) says 0 × 0.
          ...(tty && out.isTTY && out.columns > 0 && out.rows > 0
            ? { cols: out.columns, rows: out.rows }
            : {}),
        })
        process.exitCode = await relay(channel, { interactive: Boolean(opts.interactive), tty })
      },
    )
}

const SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const

/** Relays a session between this process's stdio and the agent; the local terminal is restored on every path. */
async function relay(channel: ExecChannel, o: { interactive: boolean; tty: boolean }): Promise<number> {
  const stdin = process.stdin
  const raw = o.interactive && o.tty && stdin.isTTY
  const restore = () => {
    if (raw && stdin.isRaw) stdin.setRawMode(false)
  }
  const onSignal = (signal: NodeJS.Signals) => {
    restore()
    channel.close()
    process.exit(128 + (constants.signals[signal] ?? 0))
  }
  const onResize = () => {
    const { columns, rows } = process.stdout
    if (columns > 0 && rows > 0) channel.resize(columns, rows)
  }
  process.once('exit', restore)
  for (const s of SIGNALS) process.on(s, onSignal)
  try {
    if (raw) {
      stdin.setRawMode(true)
      // Node's raw mode keeps output post-processing (\n → \r\n): the remote terminal already did that, and a
      // full-screen program's bare \n must stay a line feed. Leaving raw mode restores the saved settings.
      spawnSync('stty', ['-opost'], { stdio: ['inherit', 'ignore', 'ignore'] })
    }
    if (o.tty && process.stdout.isTTY) process.stdout.on('resize', onResize)
    channel.stdout.pipe(process.stdout, { end: false })
    channel.stderr.pipe(process.stderr, { end: false })
    if (o.interactive) stdin.pipe(channel.stdin)
    else channel.stdin.end()
    const exit = await channel.exited
    await Promise.all([finished(channel.stdout), finished(channel.stderr)])
    return execExitCode(exit)
  } finally {
    restore()
    process.off('exit', restore)
    for (const s of SIGNALS) process.off(s, onSignal)
    process.stdout.off('resize', onResize)
    if (o.interactive) {
      stdin.unpipe(channel.stdin)
      // A reading stdin keeps the process alive after the command ended.
      stdin.destroy()
    }
    channel.close()
  }
}
