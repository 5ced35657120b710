// Shared output of the benchmarks: a table on stdout and a JSON file under bench-results/.
import { mkdirSync, writeFileSync } from 'node:fs'
import { join, resolve } from 'node:path'

export const RESULTS_DIR = resolve(import.meta.dirname, '../../bench-results')

export function percentile(values: number[], p: number): number {
  if (values.length === 0) return Number.NaN
  const sorted = [...values].sort((a, b) => a - b)
  const idx = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))
  return sorted[idx] ?? Number.NaN
}

export interface Row {
  metric: string
  value: number
  unit: string
  baseline?: number
  target?: string
}

export function printRows(title: string, rows: Row[]): void {
  const fmt = (n: number | undefined) =>
    n === undefined || Number.isNaN(n) ? '' : Number.isInteger(n) ? String(n) : n.toFixed(2)
  const lines = [['METRIC', 'VALUE', 'UNIT', 'BASELINE', 'RATIO', 'TARGET']]
  for (const r of rows) {
    const ratio = r.baseline ? r.value / r.baseline : undefined
    lines.push([r.metric, fmt(r.value), r.unit, fmt(r.baseline), fmt(ratio), r.target ?? ''])
  }
  const widths = lines[0]?.map((_, i) => Math.max(...lines.map((l) => (l[i] ?? '').length))) ?? []
  process.stdout.write(`\n${title}\n`)
  for (const l of lines)
    process.stdout.write(
      `${l
        .map((c, i) => c.padEnd(widths[i] ?? 0))
        .join('  ')
        .trimEnd()}\n`,
    )
}

export function writeJson(name: string, data: unknown): string {
  mkdirSync(RESULTS_DIR, { recursive: true })
  const file = join(RESULTS_DIR, `${name}.json`)
  writeFileSync(file, `${JSON.stringify(data, null, 2)}\n`)
  return file
}
