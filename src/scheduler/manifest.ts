// Workload manifests as YAML: `km1s apply -f` reads them, `km1s get -o yaml` writes them. Apart from
// workload.ts because only the CLI needs YAML: the agent imports workload.ts, and the yaml library is 157 KB of
// bundle that every agent would otherwise load and keep (docs/scheduler.md).
import { parseAllDocuments, stringify } from 'yaml'
import { Km1sError } from '../common/errors.ts'
import { normalizeWorkload, toManifest, type WorkloadValue } from './workload.ts'

/** Several workloads as one YAML stream, one document each. */
export function workloadsToYaml(ws: WorkloadValue[]): string {
  return ws.map((w) => stringify(toManifest(w))).join('---\n')
}

/** Every document of a YAML (or JSON) file, validated; the first bad one throws, naming file, document, field. */
export function parseManifests(text: string, file: string): WorkloadValue[] {
  const docs = parseAllDocuments(text, { prettyErrors: false })
  const list = Array.isArray(docs) ? docs : [docs]
  const out: WorkloadValue[] = []
  const names = new Set<string>()
  list.forEach((doc, i) => {
    const where = list.length > 1 ? `${file} document ${i + 1}` : file
    const err = doc.errors[0]
    if (err) throw new Km1sError('ERR_INVALID', `${where} is not valid YAML: ${err.message.split('\n')[0]}.`)
    const value = doc.toJS() as unknown
    if (value === null || value === undefined) return // an empty document (a trailing ---)
    if (typeof value !== 'object' || Array.isArray(value))
      throw new Km1sError('ERR_INVALID', `${where}: a workload is a mapping of fields (name, command, …).`)
    const w = normalizeWorkload(value, where)
    if (names.has(w.name))
      throw new Km1sError(
        'ERR_INVALID',
        `${where}: name ${w.name} appears twice in ${file}; give each a new name.`,
      )
    names.add(w.name)
    out.push(w)
  })
  if (out.length === 0)
    throw new Km1sError('ERR_INVALID', `${file} holds no workload; write at least a name and a command.`)
  return out
}
