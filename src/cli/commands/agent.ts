import { existsSync } from 'node:fs'
import { type Command, InvalidArgumentError, Option } from 'commander'
import { DEFAULT_LISTEN, DEFAULT_TOKEN_FILE } from '../../agent/defaults.ts'
import { Km1sError } from '../../common/errors.ts'
import type { LogLevel } from '../../common/logger.ts'
import { dataPaths } from '../../common/paths.ts'
import { parseUpstream, type Upstream } from '../../dns/upstream.ts'
import { RUNTIME_CHOICES, type RuntimeChoice } from '../../runtime/types.ts'
import { globals } from '../main.ts'

interface AgentOptions {
  name?: string
  listen: string[]
  peer: string[]
  tokenFile: string
  mdns: boolean
  logLevel: LogLevel
  suspectAfter: number
  deadAfter: number
  forgetAfter: number
  runtime: RuntimeChoice
  runDir?: string
  logDir?: string
  subnet?: string
  clusterCidr: string
  wgPort: number
  network?: boolean
  dnsPort: number | null
  dnsUpstream: Upstream[] | undefined
}

function seconds(what: string) {
  return (value: string): number => {
    const n = Number(value)
    if (!Number.isFinite(n) || n <= 0)
      throw new InvalidArgumentError(`${what} is a number of seconds above 0.`)
    return n
  }
}

function port(value: string): number {
  const n = Number(value)
  if (!Number.isInteger(n) || n < 1 || n > 65535)
    throw new InvalidArgumentError('--wg-port is a port from 1 to 65535.')
  return n
}

const collect = (value: string, previous: string[]) => [...previous, value]

function dnsPort(value: string): number | null {
  if (value === 'off') return null
  const n = Number(value)
  if (!Number.isInteger(n) || n < 1 || n > 65535)
    throw new InvalidArgumentError('--dns-port is a port number (1–65535) or off.')
  return n
}

/** `none` forwards nothing; the flag repeated lists several upstreams in order. */
function dnsUpstream(value: string, previous: Upstream[] | undefined): Upstream[] {
  if (value === 'none') return previous ?? []
  const u = parseUpstream(value)
  if (!u) throw new InvalidArgumentError(`--dns-upstream ${value} is not an IPv4 ADDRESS[:PORT] or none.`)
  return [...(previous ?? []), u]
}

function agentOptions(cmd: Command): Command {
  return cmd
    .option('--name <name>', "this node's name (default: the name given to init/join, else the host name)")
    .option(
      '--listen <multiaddr>',
      `address to listen on, repeatable (default: ${DEFAULT_LISTEN.join(', ')})`,
      collect,
      [],
    )
    .option('--peer <multiaddr>', 'a peer to dial for networks without multicast, repeatable', collect, [])
    .option('--token-file <path>', 'join token file consumed at first start', DEFAULT_TOKEN_FILE)
    .option('--no-mdns', 'do not discover peers with mDNS')
    .option(
      '--suspect-after <seconds>',
      'a node not heard for this long is suspect',
      seconds('--suspect-after'),
      3,
    )
    .option('--dead-after <seconds>', 'a node not heard for this long is dead', seconds('--dead-after'), 5)
    .option(
      '--forget-after <seconds>',
      'a dead node leaves km1s nodes after this long',
      seconds('--forget-after'),
      86_400,
    )
    .addOption(
      new Option('--runtime <kind>', 'container runtime: oci where it works (else process), or as named')
        .choices([...RUNTIME_CHOICES])
        .default('auto'),
    )
    .option('--run-dir <dir>', 'volatile runtime state (default: /run/km1s as root, else DATA_DIR/run)')
    .option('--log-dir <dir>', 'container logs (default: /run/km1s/logs as root — RAM; else DATA_DIR/logs)')
    .option(
      '--subnet <cidr>',
      'a fixed container subnet for this node (default: the node claims a free /24 of --cluster-cidr)',
    )
    .option(
      '--cluster-cidr <cidr>',
      "the cluster's container range; every node claims a /24 of it",
      '10.42.0.0/16',
    )
    .option('--wg-port <port>', "the overlay's WireGuard UDP port", port, 51820)
    .option('--no-network', 'no node network and overlay (containers then have only their own node)')
    .option('--dns-port <port>', 'port of the DNS server on loopback and the bridge, or off', dnsPort, 53)
    .option(
      '--dns-upstream <address[:port]>',
      'resolver for names outside km1s.internal, repeatable, or none (default: /etc/resolv.conf)',
      dnsUpstream,
    )
    .addOption(
      new Option('--log-level <level>', 'how much the agent logs')
        .choices(['trace', 'debug', 'info', 'warn', 'error'])
        .default('info'),
    )
}

function checkDetector(opts: AgentOptions): void {
  if (opts.deadAfter <= opts.suspectAfter) {
    throw new Km1sError(
      'ERR_INVALID',
      `--dead-after (${opts.deadAfter}) must be longer than --suspect-after (${opts.suspectAfter}).`,
    )
  }
}

async function run(cmd: Command, opts: AgentOptions, banner: boolean): Promise<void> {
  const g = globals(cmd)
  checkDetector(opts)
  const { createLogger } = await import('../../common/logger.ts')
  const logger = createLogger({ level: opts.logLevel, name: opts.name })
  // Loaded here, not at the top: every other command stays a small API client (scripts/build.mjs).
  const { runAgent } = await import('../../agent/run.ts')
  const code = await runAgent(
    {
      dataDir: g.dataDir,
      socket: g.socket,
      name: opts.name,
      listen: opts.listen.length > 0 ? opts.listen : DEFAULT_LISTEN,
      peers: opts.peer,
      tokenFile: opts.tokenFile,
      mdns: opts.mdns,
      detector: { suspectMs: opts.suspectAfter * 1000, deadMs: opts.deadAfter * 1000 },
      forgetAfterMs: opts.forgetAfter * 1000,
      runtime: opts.runtime,
      runDir: opts.runDir,
      logDir: opts.logDir,
      subnet: opts.subnet,
      dnsPort: opts.dnsPort,
      dnsUpstreams: opts.dnsUpstream,
      clusterCidr: opts.clusterCidr,
      wgPort: opts.wgPort,
      // Commander sets `network` to true unless --no-network: undefined lets the agent decide by runtime.
      network: opts.network === false ? false : undefined,
      logger,
    },
    (agent) => {
      if (!banner) return
      const sock = g.socket === `${g.dataDir}/km1s.sock` ? '' : ` --socket ${g.socket}`
      const dd = process.env.KM1S_DATA_DIR || g.dataDir === '/var/lib/km1s' ? '' : ` --data-dir ${g.dataDir}`
      process.stdout.write(
        `\nkm1s is up: node ${agent.name}, data in ${g.dataDir}, API on ${g.socket}.\n` +
          [
            [`km1s${dd}${sock} nodes`, 'the cluster from here'],
            [`km1s${dd}${sock} status`, 'this node'],
            [`km1s${dd}${sock} label ${agent.name} k=v`, 'label a node, from any node'],
            [`km1s${dd} token`, 'the join token for another machine: km1s join TOKEN && km1s agent'],
          ]
            .map(
              ([cmd, what], _, all) =>
                `  ${cmd?.padEnd(Math.max(...all.map((r) => r[0]?.length ?? 0)))}  # ${what}\n`,
            )
            .join('') +
          'Press Ctrl-C to stop.\n\n',
      )
    },
  )
  // Exit now: a library's idle socket or timer must not hold a stopped agent open.
  process.exit(code)
}

export function registerAgentCommands(program: Command): void {
  agentOptions(
    program.command('agent').description('run the agent in the foreground until SIGINT or SIGTERM'),
  ).action((opts: AgentOptions, cmd: Command) => run(cmd, opts, false))
  agentOptions(
    program
      .command('up')
      .description('start km1s on this machine: init a one-node cluster if needed, then run the agent'),
  ).action(async (opts: AgentOptions, cmd: Command) => {
    const g = globals(cmd)
    // A token on the boot partition wins over creating a new cluster: the agent consumes it at start.
    checkDetector(opts)
    const joining = existsSync(opts.tokenFile) && !existsSync(dataPaths(g.dataDir).clusterKey)
    const { initCluster } = await import('../../agent/setup.ts')
    if (!joining) await initCluster(g.dataDir, { name: opts.name })
    await run(cmd, opts, true)
  })
}
