// `km1s services`: every service, its virtual IP, ports and how many replicas serve it.
import type { Command } from 'commander'
import { ApiClient } from '../../api/index.ts'
import type { ServiceView } from '../../api/schemas.ts'
import { globals } from '../main.ts'
import { printJson, printTable } from '../output.ts'

export function serviceRow(s: ServiceView): string[] {
  return [
    s.name,
    s.ip ?? 'headless',
    s.ports.length > 0 ? s.ports.join(',') : '-',
    s.workload,
    `${s.healthy}/${s.total}`,
  ]
}

export function registerServiceCommands(program: Command): void {
  program
    .command('services')
    .description('every service: virtual IP, ports, workload, healthy/total replicas')
    .action(async (_opts: unknown, cmd: Command) => {
      const g = globals(cmd)
      const rows = await new ApiClient(g.socket).services()
      if (g.json) return printJson(rows)
      printTable(['NAME', 'IP', 'PORTS', 'WORKLOAD', 'HEALTHY'], rows.map(serviceRow))
    })
}
