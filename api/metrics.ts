// Prometheus text exposition. Collectors add samples; names are prefixed weave_.
export type Labels = Record<string, string | number>;

export class MetricsWriter {
  private readonly lines: string[] = [];
  private readonly declared = new Set<string>();

  private declare(name: string, type: 'gauge' | 'counter', help: string): void {
    if (this.declared.has(name)) return;
    this.declared.add(name);
    this.lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
  }

  private sample(name: string, value: number, labels?: Labels): void {
    const l = labels && Object.keys(labels).length
      ? `{${Object.entries(labels).map(([k, v]) => `${k}="${String(v).replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n')}"`).join(',')}}`
      : '';
    this.lines.push(`${name}${l} ${Number.isFinite(value) ? value : 0}`);
  }

  gauge(name: string, help: string, value: number, labels?: Labels): this {
    this.declare(name, 'gauge', help);
    this.sample(name, value, labels);
    return this;
  }

  counter(name: string, help: string, value: number, labels?: Labels): this {
    this.declare(name, 'counter', help);
    this.sample(name, value, labels);
    return this;
  }

  text(): string {
    return this.lines.join('\n') + '\n';
  }
}
