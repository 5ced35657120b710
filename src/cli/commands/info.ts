import type { Command } from 'commander'
import { ApiClient, type StatusView } from '../../api/index.ts'
import { parseLabelChanges } from '../labels.ts'
import { globals } from '../main.ts'
import { humanBytes, humanDuration, printJson, printTable, shortId } from '../output.ts'

/** The node network and one line per WireGuard peer, for `km1s status`. */
export function overlayLines(n: StatusView['network'], now: number): string[] {
  if (n === undefined) return [`${'Overlay:'.padEnd(14)}off (no node network on this agent)`]
  const restarts = n.restarts > 0 ? `, ${n.restarts} restarts` : ''
  const lines = [
    `${'Overlay:'.padEnd(14)}${n.subnet} on ${n.bridge}, MTU ${n.mtu}, ${n.kind ?? 'no'} WireGuard ${n.interface} port ${n.listenPort}${n.pid ? ` (pid ${n.pid}${restarts})` : ''}`,
  ]
  if (n.lastError) lines.push(`${''.padEnd(14)}last error: ${n.lastError}`)
  for (const p of n.peers) {
    const hs =
      p.latestHandshake === null
        ? 'no handshake'
        : `handshake ${humanDuration(Math.max(0, Math.round((now - p.latestHandshake) / 1000)))} ago`
    lines.push(
      `${''.padEnd(14)}${p.name.padEnd(12)} ${(p.subnet ?? '-').padEnd(16)} ${(p.endpoint ?? '-').padEnd(22)} ${hs}, rx ${humanBytes(p.rxBytes)}, tx ${humanBytes(p.txBytes)}`,
    )
  }
  return lines
}

/** Drop counters that are not zero, e.g. "2 bad-signature, 1 garbage", or "none". */
function formatDrops(dropped: Record<string, number>): string {
  const parts = Object.entries(dropped)
    .filter(([, n]) => n > 0)
    .map(([reason, n]) => `${n} ${reason}`)
  return parts.length > 0 ? parts.join(', ') : 'none'
}

export function registerInfoCommands(program: Command): void {
  program
    .command('nodes')
    .description('the nodes of the cluster as this node sees them')
    .action(async (_opts: unknown, cmd: Command) => {
      const g = globals(cmd)
      const nodes = await new ApiClient(g.socket).nodes()
      if (g.json) return printJson(nodes)
      printTable(
        ['NAME', 'ID', 'STATE', 'ADDRESSES', 'ARCH', 'CPUS', 'MEMORY', 'VERSION', 'UPTIME', 'LABELS'],
        nodes.map((n) => [
          n.self ? `${n.name} (self)` : n.name,
          shortId(n.id),
          n.state,
          n.addresses.slice(0, 2).join(',') + (n.addresses.length > 2 ? ',…' : ''),
          n.arch,
          n.cpus,
          humanBytes(n.memory),
          n.version,
          humanDuration(n.uptime),
          Object.entries(n.labels)
            .map(([k, v]) => `${k}=${v}`)
            .join(','),
        ]),
      )
    })

  program
    .command('status')
    .description('this node: identity, cluster, peers, counters')
    .action(async (_opts: unknown, cmd: Command) => {
      const g = globals(cmd)
      const s = await new ApiClient(g.socket).status()
      if (g.json) return printJson(s)
      const lines: Array<[string, string]> = [
        ['Node', `${s.name} (${s.id})`],
        ['Cluster', s.cluster],
        ['Version', `${s.version}, pid ${s.pid}, up ${humanDuration(s.uptime)}`],
        ['Data', s.dataDir],
        ['Addresses', s.addresses.join(' ') || '(none)'],
        ['Nodes', `${s.nodes.alive} alive, ${s.nodes.suspect} suspect, ${s.nodes.dead} dead`],
        ['Peers', `${s.mesh.connectedPeers} connected, ${s.mesh.knownPeers} known`],
        [
          'Dials failed',
          `${s.mesh.dialFailures} (${s.mesh.handshakeFailures} handshake failures: another cluster?)`,
        ],
        [
          'Heartbeats',
          `${s.membership.heartbeatsReceived} received, ${s.membership.heartbeatsDropped} dropped`,
        ],
        [
          'Records',
          `${s.state.records} (${s.state.tombstones} deleted), digest ${s.state.digest}, ${s.state.pendingWrites} not yet on disk`,
        ],
        [
          'Replication',
          `${s.state.applied} applied, ${s.state.stale} already known, ${s.state.published} published`,
        ],
        [
          'Sync',
          `${s.state.syncSessions} sessions (${s.state.syncFailures} failed, ${s.state.roundsSkipped} skipped in sync), ${s.state.recordsSent} records sent, ${s.state.recordsReceived} received`,
        ],
        ['Dropped', formatDrops(s.state.dropped)],
        ['Memory', `${humanBytes(s.memory.rss)} RSS, ${humanBytes(s.memory.heapUsed)} heap`],
        ['DNS', formatDns(s.dns)],
      ]
      for (const [k, v] of lines) process.stdout.write(`${`${k}:`.padEnd(14)}${v}\n`)
      for (const line of overlayLines(s.network, Date.now())) process.stdout.write(`${line}\n`)
    })

  program
    .command('label')
    .description('set (k=v) or remove (k-) labels of a node, from any node')
    .argument('<node>', 'the node: its name, id or id tail')
    .argument('<changes...>', 'k=v to set, k- to remove')
    .action(async (node: string, changes: string[], _opts: unknown, cmd: Command) => {
      const g = globals(cmd)
      const { set, remove } = parseLabelChanges(changes)
      const view = await new ApiClient(g.socket).label(node, set, remove)
      if (g.json) return printJson(view)
      const labels = Object.entries(view.labels).map(([k, v]) => `${k}=${v}`)
      process.stdout.write(`${view.name}: ${labels.length > 0 ? labels.join(' ') : '(no labels)'}\n`)
    })

  program
    .command('forget')
    .description("remove a dead node from every node's list")
    .argument('<node>', 'the node: its name, id or id tail')
    .action(async (node: string, _opts: unknown, cmd: Command) => {
      const g = globals(cmd)
      const gone = await new ApiClient(g.socket).forget(node)
      if (g.json) return printJson(gone)
      process.stdout.write(`Forgot ${gone.name} (${gone.id}).\n`)
    })

  program
    .command('doctor')
    .description('what this host can and cannot do for km1s, and what to install or enable')
    .action(async (_opts: unknown, cmd: Command) => {
      const g = globals(cmd)
      const { runDoctor } = await import('../../doctor/index.ts')
      const report = await runDoctor({ dataDir: g.dataDir, socket: g.socket })
      if (g.json) printJson(report)
      else {
        printTable(
          ['CHECK', 'RESULT', 'DETAIL'],
          report.checks.map((c) => [c.name, c.level, c.detail]),
        )
        const fixes = report.checks.filter((c) => c.fix)
        if (fixes.length > 0) {
          process.stdout.write('\nTo fix:\n')
          for (const c of fixes) process.stdout.write(`  ${c.name}: ${c.fix}\n`)
        }
      }
      if (!report.ok) process.exitCode = 1
    })
}

function formatDns(dns: StatusView['dns']): string {
  if (!dns) return 'off'
  const where = dns.listening.join(' ') || 'not listening'
  const missing = dns.missing.length ? ` (cannot listen on ${dns.missing.join(', ')} yet)` : ''
  return `${where}${missing}; ${dns.names} cluster names; ${dns.queries} queries: ${dns.answered} answered, ${dns.nxdomain} NXDOMAIN, ${dns.forwarded} forwarded to ${dns.upstreams.join(' ') || 'no upstream'}, ${dns.refused} refused, ${dns.formerr} malformed, ${dns.rateLimited} rate-limited`
}
